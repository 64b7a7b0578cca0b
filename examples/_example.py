"""What the examples share: settings for the local broker and a few child processes.

Not an example itself. Each example runs its charts in child processes of
its own script (``--child N``); this module starts them, shows their output
and stops them.

Settings: a ``.env`` (or the environment) is used when it has
``MESH_ENCRYPTION_KEY``; otherwise the examples use the local broker's
``guest`` account and a fresh key made for this run, so they run on a fresh
machine. LAN discovery is off unless you turn it on
(``MIROS_RABBITMQ_LAN_DISCOVERY=1``): the examples stay on this machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid

from cryptography.fernet import Fernet
from dotenv import find_dotenv


def use_local_settings() -> None:
    os.environ.setdefault("MIROS_RABBITMQ_LAN_DISCOVERY", "0")
    if os.environ.get("MESH_ENCRYPTION_KEY") or find_dotenv(usecwd=True):
        return
    os.environ.setdefault("RABBIT_USER", "guest")
    os.environ.setdefault("RABBIT_PASSWORD", "guest")
    os.environ["MESH_ENCRYPTION_KEY"] = Fernet.generate_key().decode()


def arguments(description: str, charts: int = 3, duration: float = 12.0,
              **extra: type) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--charts", type=int, default=charts, help="processes to start")
    parser.add_argument("--duration", type=float, default=duration, help="seconds to run")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    for name, kind in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    return parser.parse_args()


def say(text: str) -> None:
    """One whole line to stdout (the lines of several threads never mix)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_children(args: argparse.Namespace, *extra: str) -> int:
    """Start ``args.charts`` copies of the calling script as ``--child N``; wait for them.

    Everything child 0 prints is shown; of the others only their own lines
    (not the snoop lines ``[+t]``/``[+s]``, which every process prints and
    child 0 shows already).
    """
    use_local_settings()
    os.environ.setdefault("EXAMPLE_RUN", uuid.uuid4().hex[:6])
    script = os.path.abspath(sys.argv[0])
    children = [subprocess.Popen(
        [sys.executable, script, "--child", str(n), "--charts", str(args.charts),
         "--duration", str(args.duration), *extra],
        stdout=subprocess.PIPE, text=True, bufsize=1) for n in range(args.charts)]
    lock = threading.Lock()

    def relay(n: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if n == 0 or not line.lstrip().startswith(("[+t]", "[+s]")):
                with lock:
                    sys.stdout.write(line)
                    sys.stdout.flush()

    readers = [threading.Thread(target=relay, args=(n, c)) for n, c in enumerate(children)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + args.duration + 60
    codes = []
    try:
        for child in children:
            codes.append(child.wait(timeout=max(1.0, deadline - time.monotonic())))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        for child in children:
            child.terminate()
        codes = [child.wait() for child in children]
    for reader in readers:
        reader.join()
    return max(codes)
