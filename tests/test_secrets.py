"""Secrets never show: not in any log level (DEBUG included), snoop output, reprs,
exception texts or tracebacks.

A password of its own (with characters that URL-encoding changes) is made on
the extra broker, and fresh keys are used, so a leak cannot hide behind
``guest`` (which appears in URLs and docs for other reasons). Every piece of
text the library produced during the test is searched for the password (as
is and URL-encoded) and for any 8 characters of each key.
"""

from __future__ import annotations

import logging
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from miros import Event, signals

from miros_rabbitmq import (
    BrokerAuthenticationError,
    ConfigurationError,
    NetworkedActiveObject,
    load_settings,
)
from miros_rabbitmq.discovery.discovery import Discovery, DiscoveryConfig
from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.testing import EventRecorder, recording_state, wait_for
from miros_rabbitmq.transport import LINKS, parse_peer

pytestmark = pytest.mark.timeout(120)


class Secrets:
    def __init__(self) -> None:
        self.user = f"leakprobe_{uuid.uuid4().hex[:6]}"
        self.password = f"Pw+{uuid.uuid4().hex[:12]}/x"  # '+' and '/' change when URL-quoted
        self.keys = {name: Fernet.generate_key().decode() for name in ("mesh", "trace", "spy")}

    def needles(self) -> list[str]:
        found = [self.password, urllib.parse.quote(self.password, safe=""),
                 urllib.parse.quote_plus(self.password), self.password.replace("+", " ")]
        for key in self.keys.values():
            found += [key[i:i + 8] for i in range(len(key) - 7)]
        return found

    def leaks(self, text: str) -> list[str]:
        return [needle for needle in self.needles() if needle in text]


@pytest.fixture
def secrets(extra_rabbitmq_node, mesh_env, monkeypatch) -> Iterator[Secrets]:
    """A user with a distinctive password on the extra broker; the environment uses it."""
    found = Secrets()
    node = extra_rabbitmq_node
    node.ctl("add_user", found.user, found.password)
    try:
        node.ctl("set_permissions", "-p", "/", found.user, ".*", ".*", ".*")
        monkeypatch.setenv("RABBIT_USER", found.user)
        monkeypatch.setenv("RABBIT_PASSWORD", found.password)
        monkeypatch.setenv("RABBIT_PORT", str(node.port))
        monkeypatch.setenv("MESH_ENCRYPTION_KEY", found.keys["mesh"])
        monkeypatch.setenv("SNOOP_TRACE_ENCRYPTION_KEY", found.keys["trace"])
        monkeypatch.setenv("SNOOP_SPY_ENCRYPTION_KEY", found.keys["spy"])
        yield found
    finally:
        node.ctl("delete_user", found.user, check=False)


def _texts_of(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error)


def test_no_secret_in_logs_snoop_reprs_or_errors(secrets, mesh_env, extra_rabbitmq_node, capfd,
                                                 caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: pika's too
    for name in ("miros_rabbitmq", "pika"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    texts: list[str] = []
    rec = EventRecorder()
    receiver = NetworkedActiveObject(f"leak_rx_{uuid.uuid4().hex[:4]}", tx_routing_key="leak.none",
                                     rx_routing_key="leak.tx", peers=[], lan_discovery=False)
    # a peer that refuses these credentials (the local broker does not know the user)
    sender = NetworkedActiveObject(f"leak_tx_{uuid.uuid4().hex[:4]}", tx_routing_key="leak.tx",
                                   rx_routing_key="leak.none", lan_discovery=False,
                                   peers=[f"127.0.0.1:{mesh_env['RABBIT_PORT']}"])
    sender.enable_snoop_trace_no_color()
    sender.enable_snoop_spy_no_color()
    receiver.start_at(recording_state(rec, ["leak_hello"]))
    sender.start_at(recording_state(EventRecorder(), []))
    try:
        for n in range(5):
            sender.transmit(Event(signal=signals.leak_hello, payload={"n": n}))
        sender.snoop_scribble("a scribble")
        rec.wait_for_count(5, timeout=10)
        wait_for(lambda: any(p["last_error"] for p in sender.nets.stats()["peers"].values()), 10,
                 message="the refusing peer's error")
        settings = load_settings()
        objects = [sender, receiver, sender.nets, receiver.nets, settings, sender.nets.stats(),
                   *sender.nets.links(), *LINKS.links(), ScoutCredentials(settings),
                   parse_peer(f"amqp://{secrets.user}:{urllib.parse.quote(secrets.password, safe='')}"
                              f"@127.0.0.1:{extra_rabbitmq_node.port}/%2F", settings),
                   Discovery(settings, DiscoveryConfig()), sender.this_url(), sender.other_urls()]
        texts += [repr(o) for o in objects] + [str(o) for o in objects]
        # a scout with these credentials, its live trace and spy printed
        scout = RabbitConsumerScoutChart("127.0.0.1", "leak.tx", "miros.mesh.exchange",
                                         live_trace=True, live_spy=True)
        try:
            wait_for(lambda: scout.answer is not None, 10, message="the scout's answer")
            texts += [repr(scout), str(scout.last_reason), str(scout.answer), scout.trace()]
        finally:
            scout.stop()
    finally:
        sender.stop()
        receiver.stop()
    # the wrong password: a clear error at start, naming neither secret
    wrong = NetworkedActiveObject("leak_wrong", rabbit_password=secrets.password + "-wrong",
                                  tx_routing_key="a", rx_routing_key="b", peers=[],
                                  lan_discovery=False)
    with pytest.raises(BrokerAuthenticationError) as raised:
        wrong.start_at(recording_state(EventRecorder(), []))
    texts.append(_texts_of(raised.value))
    # a key that is no Fernet key: the error does not quote it
    with pytest.raises(ConfigurationError) as bad_key:
        NetworkedActiveObject("leak_badkey", mesh_encryption_key=secrets.password, peers=[],
                              lan_discovery=False)
    texts.append(_texts_of(bad_key.value))
    out, err = capfd.readouterr()
    assert "[+t]" in out and "[+s]" in out  # the snoop output was there to be searched
    logs = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was really on
    everything = {"logs": logs, "stdout": out, "stderr": err, "reprs and errors": "\n".join(texts)}
    leaked = {where: secrets.leaks(text) for where, text in everything.items() if secrets.leaks(text)}
    assert not leaked, leaked
