"""Extra RabbitMQ nodes and network namespaces: the project's own test machinery.

Not shipped to users (it needs Debian's ``rabbitmq-server``, and root for
namespaces). tests/conftest.py turns it into the fixtures
``rabbit_node_factory`` and ``extra_rabbitmq_node``; tests/netlab.py builds
virtual LANs on it; benchmarks import it through ``sys.path``.

* :class:`RabbitNode` — one more broker ("another machine") on free ports,
  optionally inside a network namespace, started as the ``rabbitmq`` user;
* :func:`start_nodes` / :func:`stop_nodes` — several at once;
* :func:`cleanup_stray_nodes` — ends nodes of a test process that died;
* :func:`run_in_netns`, :func:`netns_pids`, :func:`amqp_ping` (from inside a
  namespace).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from miros_rabbitmq.testing import free_port, wait_for
from miros_rabbitmq.testing.network import _amqp_ping

__all__ = [
    "RabbitNode",
    "amqp_ping",
    "cleanup_stray_nodes",
    "netns_pids",
    "run_in_netns",
    "start_nodes",
    "stop_nodes",
]

T = TypeVar("T")

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RABBITMQ_USER = "rabbitmq"
RABBITMQ_HOME = "/var/lib/rabbitmq"

#: every node a RabbitNode starts is named ``<prefix><owner pid>-<n>``; the owner
#: pid lets a later run find and end the nodes of a test process that died.
NODE_PREFIX = "mirostest-"
#: an extra (ignored) Erlang flag that marks our beam.smp processes
NODE_MARKER = "-miros_rabbitnode"

_NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def amqp_ping(host: str, port: int = 5672, timeout: float = 1.0, netns: str | None = None) -> bool:
    """True when an AMQP 0-9-1 broker answers at host:port with ``connection.start``.

    With ``netns`` the probe is made from inside that network namespace.
    """
    return run_in_netns(netns, _amqp_ping, host, port, timeout)


def _netns_path(name: str) -> Path:
    return _NETNS_DIR / name


def run_in_netns(netns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a short-lived thread that joined network namespace ``netns``.

    Sockets made by ``fn`` belong to that namespace for their whole life, so
    e.g. ``run_in_netns("ns1", pika.BlockingConnection, params)`` gives a
    connection made from inside ``ns1`` that the caller then uses normally.
    ``netns=None`` simply calls ``fn``. Needs root (CAP_SYS_ADMIN).
    """
    if netns is None:
        return fn(*args, **kwargs)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(_netns_path(name)).st_ino
    except OSError:
        return None


def netns_pids(name: str) -> list[int]:
    """Pids of the processes whose network namespace is ``name`` (like ``ip netns pids``)."""
    inode = _netns_inode(name)
    if inode is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _marked_nodes() -> dict[int, str]:
    """beam.smp pids started by a RabbitNode -> node name."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if argv and argv[0].endswith("beam.smp") and NODE_MARKER in argv:
            i = argv.index(NODE_MARKER)
            if i + 1 < len(argv):
                found[int(entry)] = argv[i + 1]
    return found


def _kill_node_processes(pid: int) -> None:
    """SIGKILL a beam.smp and its process group (its shell proxy, erl_child_setup, ...)."""
    try:
        pgid = os.getpgid(pid)
    except OSError:
        pgid = None
    if pgid is not None and pgid not in (os.getpgrp(), 0, 1):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    _kill(pid)


_DATA_DIR_PREFIX = "miros-rabbitnode-"
#: names of the form ``<letters>-<owner pid>-...`` (RabbitNode's ``mirostest-<pid>-<n>``,
#: VirtualLan's ``mrlan-<pid>-<n>-h<i>``) say which process owns a node
_OWNED_NAME = re.compile(r"[A-Za-z]+-(\d+)-")


def _owner_is_gone(name: str) -> bool:
    m = _OWNED_NAME.match(name)
    if m is None:
        return False
    return int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))


def cleanup_stray_nodes() -> list[str]:
    """End RabbitNode brokers whose owning test process is gone; return their names.

    Only nodes named ``<letters>-<pid>-...`` (the default ``mirostest-<pid>-<n>``) are
    considered, and only those whose owner pid no longer runs, so parallel test runs
    on one machine are safe. Data folders such nodes left in the temp folder go too.
    """
    ended = []
    for pid, name in _marked_nodes().items():
        if _owner_is_gone(name):
            _kill_node_processes(pid)
            ended.append(name)
    running = set(_marked_nodes().values())
    tmp = Path(tempfile.gettempdir())
    try:
        leftovers = [p for p in tmp.iterdir() if p.name.startswith(_DATA_DIR_PREFIX)]
    except OSError:
        leftovers = []
    for path in leftovers:
        name = path.name[len(_DATA_DIR_PREFIX) :]
        if _owner_is_gone(name) and not any(name.startswith(n + "-") for n in running):
            shutil.rmtree(path, ignore_errors=True)
    return ended


# ------------------------------------------------------------------ RabbitNode

_node_counter = itertools.count(1)


def _run_as_rabbitmq() -> tuple[int, int] | None:
    """(uid, gid) of the rabbitmq user when we are root and it exists, else None."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(RABBITMQ_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


_live_nodes: set[RabbitNode] = set()


@atexit.register
def _kill_live_nodes() -> None:
    """A process that exits without closing its nodes does not leave brokers behind."""
    for node in list(_live_nodes):
        try:
            node.kill()
            if node._own_dir and node._base_dir is not None:
                shutil.rmtree(node._base_dir, ignore_errors=True)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: salt + sha256(salt + password), base64."""
    import base64
    import hashlib

    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _definitions(username: str, password: str) -> str:
    """Boot definitions: the node's own user, and the default scout account."""
    import json

    from miros_rabbitmq.wire.names import (
        DEFAULT_SCOUT_PASSWORD,
        DEFAULT_SCOUT_USER,
        SCOUT_PERMISSIONS,
    )

    algorithm = "rabbit_password_hashing_sha256"
    configure, write, read = SCOUT_PERMISSIONS
    return json.dumps({
        "users": [
            {"name": username, "password_hash": _password_hash(password),
             "hashing_algorithm": algorithm, "tags": "administrator"},
            {"name": DEFAULT_SCOUT_USER, "password_hash": _password_hash(DEFAULT_SCOUT_PASSWORD),
             "hashing_algorithm": algorithm, "tags": ""},
        ],
        "vhosts": [{"name": "/"}],
        "permissions": [
            {"user": username, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": DEFAULT_SCOUT_USER, "vhost": "/", "configure": configure, "write": write,
             "read": read},
        ],
    })


class RabbitNode:
    """One extra RabbitMQ node: its own node name, AMQP port, distribution port and data folder.

    It stands for "another machine" in a test. ``netns="ns1"`` starts it inside that
    (existing) network namespace, where it listens on every address of the
    namespace. As root the node runs as the ``rabbitmq`` user (HOME
    ``/var/lib/rabbitmq``, so ``rabbitmqctl`` shares its Erlang cookie); as any
    other user it runs as that user (no namespaces then).

    The node boots with no plugins and a config file of its own (``loopback_users
    = none`` so guest may log in over a namespace LAN), and, unless
    ``scout_account=False``, the default scout account (``miros_scout``, allowed
    to publish to the scout exchange only; docs/security.md), loaded from a
    definitions file at boot (no rabbitmqctl round trip). ``start()`` returns when
    the port answers AMQP (``connection.start``), never after a fixed sleep.
    ``stop()`` sends SIGTERM to the node's process group, then SIGKILL; ``close()``
    also deletes the data folder. ``kill()`` simulates a crash. As a context
    manager: start on enter (if not started), close on exit.

    ``RabbitNode.start_times`` collects (node name, seconds) of every start in
    this process; tests/conftest.py prints them in the summary.
    """

    start_times: list[tuple[str, float]] = []

    def __init__(
        self,
        name: str | None = None,
        *,
        port: int | None = None,
        dist_port: int | None = None,
        netns: str | None = None,
        bind: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        username: str = "guest",
        password: str = "guest",
        log_level: str = "info",
        extra_config: Mapping[str, str] | None = None,
        server: str = RABBITMQ_SERVER,
        ctl: str = RABBITMQCTL,
        scout_account: bool = True,
    ) -> None:
        self.scout_account = scout_account
        self.name = name or f"{NODE_PREFIX}{os.getpid()}-{next(_node_counter)}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"node name {self.name!r}: use letters, digits, '-' and '_'")
        self.nodename = f"{self.name}@localhost"
        self.netns = netns
        if netns is not None:
            if os.geteuid() != 0:
                raise PermissionError("a RabbitNode in a network namespace needs root")
            # a namespace has its own ports: use the standard ones, like a real machine
            self.port = port or 5672
            self.dist_port = dist_port or 25672
            self.bind = bind or "0.0.0.0"
        else:
            self.bind = bind or "127.0.0.1"
            self.port = port or free_port(self.bind)
            self.dist_port = dist_port or free_port(self.bind)
        self.username = username
        self.password = password
        self.log_level = log_level
        self.extra_config = dict(extra_config or {})
        self.server = server
        self.ctl_path = ctl
        self._own_dir = base_dir is None
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self.start_seconds: float | None = None
        self._ids = _run_as_rabbitmq()

    # ---------------------------------------------------------------- facts

    @property
    def host(self) -> str:
        """Address to reach the node from its own network namespace."""
        return "127.0.0.1" if self.bind in ("0.0.0.0", "::", "") else self.bind

    @property
    def url(self) -> str:
        """AMQP URL of the node, as seen from its own network namespace."""
        return f"amqp://{self.username}:{self.password}@{self.host}:{self.port}/%2F"

    def url_for(self, host: str) -> str:
        """AMQP URL of the node through another of its addresses (e.g. its LAN address)."""
        return f"amqp://{self.username}:{self.password}@{host}:{self.port}/%2F"

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix=f"{_DATA_DIR_PREFIX}{self.name}-"))
        return self._base_dir

    @property
    def log_file(self) -> Path:
        return self.base_dir / "log" / f"{self.nodename}.log"

    @property
    def console_file(self) -> Path:
        return self.base_dir / "console.log"

    @property
    def pid(self) -> int | None:
        """Pid of the node's process group leader (the rabbitmq-server script)."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def answers(self, timeout: float = 1.0) -> bool:
        """True when the node's AMQP port answers (from inside its namespace)."""
        return amqp_ping(self.host, self.port, timeout, self.netns)

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        state = "running" if self.is_running() else "stopped"
        return f"<RabbitNode {self.nodename} port={self.port}{where} {state}>"

    # ------------------------------------------------------------- commands

    def _prefix(self) -> list[str]:
        argv: list[str] = []
        if self.netns is not None:
            argv += ["ip", "netns", "exec", self.netns]
        if self._ids is not None:
            uid, gid = self._ids
            argv += ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups"]
        return argv

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self.base_dir
        if self._ids is not None:
            env["HOME"] = RABBITMQ_HOME
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"{NODE_MARKER} {self.name}",
        )
        return env

    def ctl(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` (in the node's namespace, as its user)."""
        argv = [*self._prefix(), self.ctl_path, "-n", self.nodename, *args]
        done = subprocess.run(
            argv, env=self._env(), capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}"
            )
        return done

    def _write_files(self) -> None:
        d = self.base_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(exist_ok=True)
        bind = self.bind
        listener = f"[{bind}]:{self.port}" if ":" in bind else f"{bind}:{self.port}"
        config = {
            "listeners.tcp.1": listener,
            "loopback_users": "none",
            "default_user": self.username,
            "default_pass": self.password,
            "log.console": "false",
            "log.file.level": self.log_level,
            "disk_free_limit.absolute": "1MB",
            **self.extra_config,
        }
        if self.scout_account:
            (d / "definitions.json").write_text(_definitions(self.username, self.password))
            config.setdefault("load_definitions", str(d / "definitions.json"))
        (d / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in config.items()))
        (d / "enabled_plugins").write_text("[].\n")
        if self._ids is not None:
            uid, gid = self._ids
            for path in [d, *d.rglob("*")]:
                os.chown(path, uid, gid)
            for parent in d.parents:
                if not os.stat(parent).st_mode & 0o001:
                    raise PermissionError(
                        f"the {RABBITMQ_USER} user cannot enter {parent} (no o+x) to reach {d}: "
                        "give RabbitNode a base_dir outside it, or none"
                    )

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90.0, wait: bool = True) -> RabbitNode:
        """Start the node; with ``wait`` return once it answers AMQP (see ``wait_ready``)."""
        if self.is_running():
            if wait:
                self.wait_ready(timeout)
            return self
        if not os.path.exists(self.server):
            raise FileNotFoundError(f"{self.server} not found: install Debian's rabbitmq-server")
        cleanup_stray_nodes()
        if self.netns is not None and _netns_inode(self.netns) is None:
            raise FileNotFoundError(f"network namespace {self.netns!r} does not exist")
        if self.netns is None and self.answers(0.2):
            raise RuntimeError(f"port {self.host}:{self.port} is already taken by another broker")
        self._write_files()
        console = open(self.console_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._started_at = time.monotonic()
            self._proc = subprocess.Popen(
                [*self._prefix(), self.server],
                env=self._env(),
                cwd=str(self.base_dir),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            console.close()
        _live_nodes.add(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90.0) -> RabbitNode:
        """Block until the node answers AMQP; raise (and stop it) if it dies or times out."""
        if self._proc is None:
            raise RuntimeError(f"{self.nodename} was not started")
        deadline = time.monotonic() + timeout
        while not self.answers(0.5):
            if self._proc.poll() is not None:
                tail = self._tail()
                self.stop()
                raise RuntimeError(
                    f"RabbitMQ node {self.nodename} exited with {self._proc.returncode} "
                    f"before answering on port {self.port}:\n{tail}"
                )
            if time.monotonic() >= deadline:
                tail = self._tail()
                self.stop()
                raise TimeoutError(
                    f"RabbitMQ node {self.nodename} did not answer AMQP on port {self.port} "
                    f"within {timeout:g} s:\n{tail}"
                )
            time.sleep(0.05)
        if self.start_seconds is None and self._started_at:
            self.start_seconds = time.monotonic() - self._started_at
            RabbitNode.start_times.append((self.name, self.start_seconds))
        return self

    def _tail(self, lines: int = 30) -> str:
        text = []
        for path in (self.console_file, self.log_file):
            try:
                text += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(text)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node (SIGTERM to its process group, SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._after_stop()

    def kill(self) -> None:
        """End the node at once with SIGKILL, like a machine that lost power."""
        proc = self._proc
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self._after_stop()

    def _after_stop(self) -> None:
        _live_nodes.discard(self)
        # a beam.smp of this node that escaped the process group
        for pid, name in _marked_nodes().items():
            if name == self.name:
                _kill_node_processes(pid)
        if self.netns is not None:
            self._end_lonely_epmd()
        self.start_seconds = None

    def _end_lonely_epmd(self) -> None:
        """The node started an epmd inside its namespace: end it once no node there needs it."""
        pids = netns_pids(self.netns or "")
        names = {pid: os.path.basename(_cmdline(pid)[0]) if _cmdline(pid) else "" for pid in pids}
        if not any(n == "beam.smp" for n in names.values()):
            for pid, n in names.items():
                if n == "epmd":
                    _kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the node and delete its data folder (if this object made it)."""
        self.stop()
        if self._own_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None

    def restart(self, timeout: float = 90.0) -> RabbitNode:
        """Stop and start again with the same data (a machine reboot)."""
        self.stop()
        return self.start(timeout)

    def stop_app(self, timeout: float = 60.0) -> None:
        """``rabbitmqctl stop_app``: the Erlang node stays, the broker stops answering."""
        self.ctl("stop_app", timeout=timeout)
        wait_for(
            lambda: not self.answers(0.2), timeout, message=f"{self.nodename} to stop answering"
        )

    def start_app(self, timeout: float = 60.0) -> None:
        """``rabbitmqctl start_app`` and wait until the broker answers again."""
        self.ctl("start_app", timeout=timeout)
        wait_for(lambda: self.answers(0.5), timeout, 0.05, f"{self.nodename} to answer AMQP")

    def __enter__(self) -> RabbitNode:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_nodes(nodes: Sequence[RabbitNode], timeout: float = 120.0) -> list[RabbitNode]:
    """Start several nodes at once (they boot in parallel) and wait for all of them.

    If one fails, every node of ``nodes`` is stopped and the error re-raised.
    """
    try:
        for node in nodes:
            node.start(wait=False)
        deadline = time.monotonic() + timeout
        for node in nodes:
            node.wait_ready(max(1.0, deadline - time.monotonic()))
    except BaseException:
        stop_nodes(nodes)
        raise
    return list(nodes)


def stop_nodes(nodes: Iterable[RabbitNode], timeout: float = 10.0) -> None:
    """Stop several nodes at once (SIGTERM to all first, then wait)."""
    nodes = list(nodes)
    for node in nodes:
        proc = node._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for node in nodes:
        node.stop(timeout)
