"""0.2 user code runs unchanged: every call style of 0.2's code, docs and examples.

Each style is built in its own process; all of them talk to each other over
the local broker. Misplaced arguments are refused before anything is sent.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import uuid
import warnings

import pytest
from cli_process import REPO, clean_env
from cryptography.fernet import Fernet

from miros_rabbitmq import NetworkedActiveObject, NetworkedFactory
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.testing import mesh_environment

STYLES = ["positional", "positional_all", "keyword", "mixed", "factory_positional",
          "factory_subclass", "old_snoop_names"]
NODE = os.path.join(REPO, "tests", "compat_node.py")


class Node:
    def __init__(self, style: str, routing_key: str, env: dict[str, str], cwd: str) -> None:
        self.style = style
        others = [s for s in STYLES if s != style]
        self.process = subprocess.Popen(
            [sys.executable, NODE, style, f"{style}_{uuid.uuid4().hex[:6]}", routing_key,
             *others], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=cwd)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def wait_for(self, wanted: str, timeout: float) -> bool:
        if wanted in self.seen:
            return True
        try:
            while True:
                line = self.lines.get(timeout=timeout)
                self.seen.append(line)
                if line == wanted:
                    return True
        except queue.Empty:
            return False

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def close(self) -> str:
        try:
            self.send("STOP")
            self.process.stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)
        return self.process.stderr.read() if self.process.stderr else ""  # type: ignore[union-attr]


@pytest.mark.broker
def test_every_02_call_style_talks_to_every_other(tmp_path) -> None:
    values = mesh_environment()
    env = clean_env(**values)
    env.update(COMPAT_USER=values["RABBIT_USER"], COMPAT_PASSWORD=values["RABBIT_PASSWORD"],
               COMPAT_KEY=Fernet.generate_key().decode(),
               COMPAT_SPY_KEY=Fernet.generate_key().decode(),
               COMPAT_TRACE_KEY=Fernet.generate_key().decode())
    routing_key = f"compat.{uuid.uuid4().hex[:8]}"
    nodes = [Node(style, routing_key, env, str(tmp_path)) for style in STYLES]
    errors: dict[str, str] = {}
    try:
        for node in nodes:
            assert node.wait_for("READY", 60), (node.style, node.seen, node.close())
        for node in nodes:
            node.send("GO")
        for node in nodes:
            assert node.wait_for("DONE", 30), (node.style, node.seen)
        old = next(n for n in nodes if n.style == "old_snoop_names")
        assert "WARNED" in old.seen and "SNOOP_KEYS_USED" in old.seen, old.seen
    finally:
        for node in nodes:
            errors[node.style] = node.close()
    for node in nodes:
        assert node.process.returncode == 0, (node.style, errors[node.style][-2000:])
        heard = {line[4:] for line in node.seen if line.startswith("GOT ")}
        assert heard == set(STYLES) - {node.style}, (node.style, node.seen)


# ------------------------------------------------------------------ refused before sending


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


@pytest.mark.parametrize("cls", [NetworkedActiveObject, NetworkedFactory])
def test_a_key_given_as_routing_key_is_refused(mesh_env, key, cls) -> None:
    # the slip the old positional order invited: the key lands where a routing key goes
    with pytest.raises(ConfigurationError, match="tx_routing_key") as raised:
        cls("b", "bob", "dobbs", Fernet.generate_key(), key)
    assert key not in str(raised.value)
    with pytest.raises(ConfigurationError, match="tx_routing_key") as raised:
        cls("b", "bob", "dobbs", key, key.encode())
    assert key not in str(raised.value)
    with pytest.raises(ConfigurationError, match="rx_routing_key"):
        cls("b", "bob", "dobbs", key, "heya.man", ["#.man", key])
    with pytest.raises(ConfigurationError, match="rx_routing_key"):
        cls("b", rx_routing_key=42)


def test_02_positional_order_and_rx_default(mesh_env, key) -> None:
    chart = NetworkedActiveObject("b", "bob", "dobbs", key, "heya.man")
    assert chart.settings.rabbit_user == "bob"
    assert chart.settings.rabbit_password.reveal() == "dobbs"
    assert chart.settings.mesh_keys[0].reveal() == key
    assert chart.nets.tx_routing_key == "heya.man"
    assert list(chart.nets.rx_routing_keys) == ["heya.man"]  # 0.2: rx defaults to tx
    spy, trace = Fernet.generate_key(), Fernet.generate_key()
    chart = NetworkedFactory("f", "bob", "dobbs", key, "a.b", "#.b", spy, trace)
    assert chart.settings.snoop_spy_keys[0].reveal() == spy.decode()
    assert chart.settings.snoop_trace_keys[0].reveal() == trace.decode()
    assert list(chart.nets.rx_routing_keys) == ["#.b"]
    assert list(NetworkedActiveObject("n").nets.rx_routing_keys) == ["#"]


def test_everything_after_02_arguments_is_keyword_only(mesh_env, key) -> None:
    with pytest.raises(TypeError):
        NetworkedActiveObject("b", "bob", "dobbs", key, "a", "a", key, key, [])  # peers


def test_old_snoop_key_names_warn(mesh_env, key) -> None:
    spy = Fernet.generate_key().decode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chart = NetworkedActiveObject("b", spy_snoop_encryption_key=spy)
    assert any(issubclass(w.category, DeprecationWarning)
               and "snoop_spy_encryption_key" in str(w.message) for w in caught)
    assert chart.settings.snoop_spy_keys[0].reveal() == spy
    with pytest.raises(ConfigurationError, match="same key"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NetworkedActiveObject("b", snoop_trace_encryption_key=spy,
                              trace_snoop_encryption_key=key)
