"""Security: credentials, TLS, the scout challenge's binding, aliens, channels,
terminal output, .env rules (issue #13; docs/security.md maps each test to the
threat it answers).

Real brokers: the shared local one, and one RabbitMQ node this module starts
with a TLS listener (certificates made here, in a temp folder) and a scout
account. Every address used is on loopback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from cryptography.fernet import Fernet, MultiFernet
from miros import Event, signals
from rabbit_node import RabbitNode, stop_nodes
from tls_certs import Certificates, make_certificates

from miros_rabbitmq.config import (
    ConfigurationError,
    Settings,
    find_env_file,
    load_settings,
    read_env_file,
)
from miros_rabbitmq.discovery._support import tagged
from miros_rabbitmq.discovery.producer_factory_chart import ProducerFactoryChart
from miros_rabbitmq.errors import DecodeError, PeerAddressError
from miros_rabbitmq.mesh.challenge import SCOUT_EXCHANGE, Challenge, ScoutCredentials, answer
from miros_rabbitmq.mesh.nets import MESH_EXCHANGE, MirosNets
from miros_rabbitmq.payloads import ConnectionDiscoveryPayload
from miros_rabbitmq.terminal import printable
from miros_rabbitmq.testing import free_port, wait_for
from miros_rabbitmq.transport import (
    LINKS,
    PROBER,
    BrokerLink,
    Consumer,
    ProbeResult,
    local_broker,
    parse_peer,
)
from miros_rabbitmq.wire import challenge as protocol

ROOT = Path(__file__).resolve().parent.parent
SCOUT_USER = "miros_scout_sec"
SCOUT_PASSWORD = "scout-" + uuid.uuid4().hex[:12]


# --------------------------------------------------------------------------- helpers


def settings_for(port: int, *, key: bytes | None = None, **values: str) -> Settings:
    """Settings from an explicit environment (nothing from os.environ or a .env)."""
    environ = {"RABBIT_USER": "guest", "RABBIT_PASSWORD": "guest", "RABBIT_PORT": str(port),
               "MESH_ENCRYPTION_KEY": (key or Fernet.generate_key()).decode(),
               "MIROS_RABBITMQ_LAN_DISCOVERY": "0", **values}
    return load_settings(environ=environ, dotenv_path="")


def start_nets(settings: Settings, name: str, received: list[Any] | None = None,
               peers: list[str] | None = None) -> MirosNets:
    def deliver(envelope: Any) -> bool:
        if received is not None:
            received.append(envelope)
        return True

    nets = MirosNets(name=f"{name}_{uuid.uuid4().hex[:6]}", settings=settings,
                     tx_routing_key="sec.test", rx_routing_key="sec.test", deliver=deliver,
                     peers=peers or [])
    assert nets.start(timeout=10), f"{name} did not start"
    assert wait_for(lambda: all(c.ready.is_set() for c in nets._local_consumers), 10)
    return nets


def scout_once(credentials: ScoutCredentials, entry: str, timeout: float = 1.0) -> ProbeResult:
    done: list[ProbeResult] = []
    event = threading.Event()

    def on_done(result: ProbeResult) -> None:
        done.append(result)
        event.set()

    probe = credentials.probe(entry, routing_key="sec.test", exchange_name=MESH_EXCHANGE,
                              timeout=timeout, on_done=on_done)
    assert event.wait(timeout + 5), "the probe never answered"
    assert probe.closed.wait(5)
    return done[0]


class LoginRecorder:
    """A fake AMQP server on loopback: it offers PLAIN, records what each client
    sends as its login, and closes. What "a LAN host that opens 5672" sees."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.logins: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sec-login-recorder", daemon=True)
        self._thread.start()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        start = pika.frame.Method(0, pika.spec.Connection.Start(
            server_properties={"product": "recorder"}, mechanisms="PLAIN", locales="en_US"))
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(8)  # the protocol header
                    conn.sendall(start.marshal())
                    data = b""
                    while len(data) < 4096:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                        if b"PLAIN" in data and data.endswith(b"\xce"):
                            break
                    if data:  # not the scout's bare TCP knock
                        self.logins.append(data)
                except OSError:
                    pass

    def saw(self, secret: str) -> bool:
        return any(secret.encode() in login for login in self.logins)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class TcpRelay:
    """A plain TCP relay on loopback: 127.0.0.1:<port> -> 127.0.0.1:<target>."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.relayed = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._run, name="sec-relay", daemon=True)
        self._accept.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.relayed += 1
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(a, b), name="sec-relay-pump",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self.sock.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def recorder() -> Iterator[LoginRecorder]:
    server = LoginRecorder()
    yield server
    server.close()


# --------------------------------------------------------------------------- the TLS node


class TlsNode:
    def __init__(self, node: RabbitNode, tls_port: int, certs: Certificates) -> None:
        self.node = node
        self.port = node.port
        self.tls_port = tls_port
        self.certs = certs

    def tls_values(self, *, client_cert: bool = True) -> dict[str, str]:
        values = {"RABBIT_TLS": "1", "RABBIT_CA_FILE": str(self.certs.ca)}
        if client_cert:
            values |= {"RABBIT_CERT_FILE": str(self.certs.client_cert),
                       "RABBIT_KEY_FILE": str(self.certs.client_key)}
        return values


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    """A RabbitMQ node with a plain listener and a TLS one (client certificates
    required), and a scout account allowed to publish to the scout exchange only."""
    from prereq import need_rabbitmq_server

    need_rabbitmq_server()
    tls_port = free_port()
    node = RabbitNode(f"security-tls-{os.getpid()}")
    certs = make_certificates(node.base_dir / "certs")  # chowned to the node's user with it
    node.extra_config.update({
        "listeners.ssl.1": f"127.0.0.1:{tls_port}",
        "ssl_options.cacertfile": str(certs.ca),
        "ssl_options.certfile": str(certs.server_cert),
        "ssl_options.keyfile": str(certs.server_key),
        "ssl_options.verify": "verify_peer",
        "ssl_options.fail_if_no_peer_cert": "true",
    })
    try:
        node.start(120)
        assert wait_for(lambda: _port_open(tls_port), 30), "the TLS listener never opened"
        node.ctl("add_user", SCOUT_USER, SCOUT_PASSWORD)
        node.ctl("set_permissions", "-p", "/", SCOUT_USER, "^$", r"^miros\.scout\.exchange$",
                 "^$")
        yield TlsNode(node, tls_port, certs)
    finally:
        stop_nodes([node])
        node.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- TLS


def test_amqps_is_tls_on_5671_and_never_plain() -> None:
    settings = settings_for(5672)
    peer = parse_peer("amqps://10.0.0.7/fleet", settings)
    assert (peer.host, peer.port, peer.vhost, peer.tls is not None) == ("10.0.0.7", 5671, "fleet",
                                                                        True)
    assert peer.url.startswith("amqps://")
    plain = parse_peer("amqp://10.0.0.7", settings)
    assert plain.tls is None and plain.port == 5672
    assert parse_peer("10.0.0.7", settings).tls is None
    tls = settings_for(5671, RABBIT_TLS="1")
    assert tls.rabbit_port == 5671 and local_broker(tls).tls is not None
    assert parse_peer("10.0.0.7", tls).tls is not None  # a bare host follows RABBIT_TLS
    assert settings_for(5672, RABBIT_TLS="yes", RABBIT_PORT="").rabbit_port == 5671


def test_local_broker_and_amqps_peer_over_tls(tls_node, rabbitmq_url) -> None:
    """A chart whose local broker is TLS (RABBIT_TLS, CA, client certificate), and
    a chart on the plain shared broker that names it as an amqps:// peer."""
    key = Fernet.generate_key()
    far = settings_for(tls_node.tls_port, key=key, **tls_node.tls_values())
    received: list[Any] = []
    far_nets = start_nets(far, "tls_far", received)
    near_nets = None
    try:
        link = far_nets.local_link
        assert type(link._connection._transport).__name__ == "_AsyncSSLTransport"
        assert link._connection._direct_writes is False  # the one-send(2) path is off for TLS
        connections = tls_node.node.ctl("list_connections", "ssl", "peer_port").stdout
        assert "true" in connections
        near = settings_for(5672, key=key, RABBIT_CA_FILE=str(tls_node.certs.ca),
                            RABBIT_CERT_FILE=str(tls_node.certs.client_cert),
                            RABBIT_KEY_FILE=str(tls_node.certs.client_key))
        near_nets = start_nets(near, "tls_near",
                               peers=[f"amqps://127.0.0.1:{tls_node.tls_port}/%2F"])
        peer_link = [ln for ln in near_nets.links() if ln.address.port == tls_node.tls_port][0]
        assert peer_link.connected.wait(10), peer_link.last_error
        assert type(peer_link._connection._transport).__name__ == "_AsyncSSLTransport"
        near_nets.transmit("sec_hello", {"over": "tls"})
        assert wait_for(lambda: any(e.signal_name == "sec_hello" for e in received), 10)
        # and the scout proves the TLS node over TLS
        result = scout_once(ScoutCredentials(near), f"amqps://127.0.0.1:{tls_node.tls_port}/%2F")
        assert result.ok, result.reason
    finally:
        if near_nets is not None:
            near_nets.stop()
        far_nets.stop()


def test_tls_never_falls_back_to_plain(tls_node, tmp_path) -> None:
    """A certificate our CA did not sign, a missing client certificate, or a
    plain port behind an amqps:// URL: no connection at all, never plaintext."""
    stranger = make_certificates(tmp_path / "other", "stranger")
    cases = {
        "another CA": settings_for(tls_node.tls_port, RABBIT_TLS="1",
                                   RABBIT_CA_FILE=str(stranger.ca),
                                   RABBIT_CERT_FILE=str(tls_node.certs.client_cert),
                                   RABBIT_KEY_FILE=str(tls_node.certs.client_key)),
        "no client certificate": settings_for(
            tls_node.tls_port, **tls_node.tls_values(client_cert=False)),
        "a plain port": settings_for(tls_node.port, **tls_node.tls_values()),
    }
    links = {name: BrokerLink(local_broker(settings), heartbeat=30)
             for name, settings in cases.items()}
    try:
        for name, link in links.items():
            assert wait_for(lambda link=link: link.stats.connect_failures >= 1, 15), name
            assert not link.connected.is_set(), name
            assert "guest" not in (link.last_error or ""), name
    finally:
        for link in links.values():
            link.close(flush_timeout=0)
    # the plain listener saw no AMQP login from any of them
    connections = tls_node.node.ctl("list_connections", "user", "ssl").stdout
    assert "guest\tfalse" not in connections


# --------------------------------------------------------------------------- credentials


def test_scouts_log_in_with_the_scout_account_only(tls_node, recorder) -> None:
    """A LAN host that opens the AMQP port collects the scout account's login,
    never RABBIT_PASSWORD; the scout account alone (publish to the scout
    exchange, nothing else) is enough to prove a node of our mesh."""
    key = Fernet.generate_key()
    real_password = "real-" + uuid.uuid4().hex
    settings = settings_for(tls_node.port, key=key, RABBIT_PASSWORD=real_password,
                            SCOUT_USER=SCOUT_USER, SCOUT_PASSWORD=SCOUT_PASSWORD)
    credentials = ScoutCredentials(settings)
    assert real_password not in repr(credentials) and SCOUT_PASSWORD not in repr(credentials)
    result = scout_once(credentials, recorder.hostport, timeout=1.0)
    assert not result.ok
    assert wait_for(lambda: recorder.logins, 5)
    assert recorder.saw(SCOUT_USER) and recorder.saw(SCOUT_PASSWORD)
    assert not recorder.saw(real_password)
    # against the real node: the scout account proves a node that holds our key
    node_nets = start_nets(settings_for(tls_node.port, key=key), "scouted")
    try:
        assert scout_once(credentials, f"127.0.0.1:{tls_node.port}").ok
        # a stranger's key: the same account gets nothing more than a "no"
        other = ScoutCredentials(settings_for(
            tls_node.port, SCOUT_USER=SCOUT_USER, SCOUT_PASSWORD=SCOUT_PASSWORD))
        assert not scout_once(other, f"127.0.0.1:{tls_node.port}", timeout=0.5).ok
    finally:
        node_nets.stop()
    # what the scout account may do on a broker: publish challenges, nothing else
    params = pika.ConnectionParameters("127.0.0.1", tls_node.port, credentials=pika.PlainCredentials(
        SCOUT_USER, SCOUT_PASSWORD))
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish(MESH_EXCHANGE, "sec.test", b"x")
            channel.queue_declare("", exclusive=True)
        assert refused.value.reply_code == 403


def test_a_missing_scout_password_is_named() -> None:
    with pytest.raises(Exception, match="SCOUT_PASSWORD"):
        settings_for(5672, SCOUT_USER="scout")


def test_errors_never_show_passwords() -> None:
    settings = settings_for(5672, RABBIT_PASSWORD="hunter2-real")
    for entry in ("bob:hunter2@10.0.0.7", "bob:hunter2@10.0.0.7:5672",
                  "amqp://bob:hunter2@10.0.0.7:notaport/", "http://bob:hunter2@10.0.0.7/",
                  "amqp://bob:hunter2@/", "amqp://bob:hunter2@[::1/"):
        with pytest.raises(PeerAddressError) as error:
            parse_peer(entry, settings)
        assert "hunter2" not in str(error.value), entry
    for entry in ("evil\x1b]0;pwned\x07:5672", "amqp://h\x1b[2J/"):  # an origin from the network
        with pytest.raises(PeerAddressError):
            parse_peer(entry, settings)
    address = parse_peer("amqp://bob:hunter2@10.0.0.7/v", settings)
    assert "hunter2" not in repr(address) and "hunter2" not in str(address)
    assert "hunter2-real" not in repr(settings) and "hunter2-real" not in repr(
        ScoutCredentials(settings))


# --------------------------------------------------------------------------- the challenge


def test_a_tcp_relay_in_front_of_a_node_does_not_pass_as_it(mesh_env) -> None:
    """A relay on another port of loopback forwards everything to a real node of
    our mesh; the node sees a challenge for the relay's port and stays silent."""
    settings = load_settings()
    nets = start_nets(settings, "relayed")
    relay = TcpRelay(settings.rabbit_port)
    try:
        credentials = ScoutCredentials(settings)
        direct = scout_once(credentials, f"127.0.0.1:{settings.rabbit_port}")
        assert direct.ok, direct.reason
        relayed = scout_once(credentials, f"127.0.0.1:{relay.port}", timeout=0.5)
        assert relay.relayed >= 1  # the relay did carry the connection
        assert not relayed.ok
        assert wait_for(lambda: nets.drops.counts["scout.wrong_address"] >= 1, 5)
    finally:
        nets.stop()
        relay.close()


def test_challenges_expire_and_answers_are_bound_to_their_challenge() -> None:
    keys = MultiFernet([Fernet(Fernet.generate_key())])
    now = time.time()

    def challenge_at(issued: float, port: int = 5672) -> bytes:
        body = protocol.new_challenge(host="127.0.0.1", port=port, routing_key="k",
                                      exchange_name="e", challenger="c", now=issued)
        return protocol.encode_challenge(keys, body)

    answer(keys, challenge_at(now - 1), identity="n", origin="o", port=5672)
    for issued in (now - protocol.CHALLENGE_TTL - 1, now + protocol.CLOCK_SKEW + 5):
        with pytest.raises(DecodeError) as error:
            answer(keys, challenge_at(issued), identity="n", origin="o", port=5672)
        assert error.value.reason == "expired"
    with pytest.raises(DecodeError) as error:  # sent to another port: a relay
        answer(keys, challenge_at(now, port=5999), identity="n", origin="o", port=5672)
    assert error.value.reason == "wrong_address"
    with pytest.raises(DecodeError) as error:  # sent to an address that is not ours
        answer(keys, protocol.encode_challenge(keys, protocol.new_challenge(
            host="192.0.2.77", port=5672, routing_key="k", exchange_name="e", challenger="c",
            now=now)), identity="n", origin="o", addresses={"10.0.0.5"}, port=5672)
    assert error.value.reason == "wrong_address"
    with pytest.raises(DecodeError):
        answer(keys, b"x" * (protocol.MAX_TOKEN_BYTES + 1), identity="n", origin="o")
    # the prober: an answer for another address, or to another challenge, is refused
    probe_a = Challenge(keys, routing_key="k", exchange_name="e")
    token_a = probe_a.token("127.0.0.1", 5672)
    probe_b = Challenge(keys, routing_key="k", exchange_name="e")
    probe_b.token("127.0.0.1", 5673)
    reply = answer(keys, token_a, identity="n", origin="o", port=5672)
    assert probe_a.accept(reply) and not probe_b.accept(reply)


def _publish_challenges(port: int, tokens: list[bytes], reply_to: str | None = None) -> None:
    params = pika.ConnectionParameters("127.0.0.1", port,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        if reply_to is None:
            channel.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=True)
            reply_to = "amq.rabbitmq.reply-to"
        for token in tokens:
            channel.basic_publish(SCOUT_EXCHANGE, "sec.test", token,
                                  pika.BasicProperties(reply_to=reply_to))
        connection.process_data_events(0.2)


def test_the_responder_is_rate_limited_and_decrypts_a_replay_once(mesh_env) -> None:
    settings = load_settings()
    keys = MultiFernet([Fernet(k.reveal()) for k in settings.mesh_keys])
    charts = [start_nets(settings, f"limited{i}") for i in range(3)]
    try:
        captured = Challenge(keys, routing_key="k", exchange_name="e")
        token = captured.token("127.0.0.1", settings.rabbit_port)
        _publish_challenges(settings.rabbit_port, [token] * 200)
        # three charts x 200 deliveries: the token decrypted once in this process
        replays = lambda: sum(c.drops.counts["scout.replay"] for c in charts)  # noqa: E731
        assert wait_for(lambda: replays() >= 3 * 200 - 1, 10), replays()
        answered = sum(c._local_consumers[-1].answered for c in charts)
        assert answered == 1
        # distinct challenges beyond the budget are dropped before any cryptography
        flood = [Challenge(keys, routing_key="k", exchange_name="e").token(
            "127.0.0.1", settings.rabbit_port) for _ in range(400)]
        _publish_challenges(settings.rabbit_port, flood)
        limited = lambda: sum(c.drops.counts["scout.rate_limited"] for c in charts)  # noqa: E731
        assert wait_for(lambda: limited() >= 400, 10), limited()
    finally:
        for nets in charts:
            nets.stop()


def test_the_responder_answers_through_direct_reply_to_only(mesh_env) -> None:
    """A challenge whose reply_to names a chart's queue must not make the node
    publish into that queue."""
    settings = load_settings()
    keys = MultiFernet([Fernet(k.reveal()) for k in settings.mesh_keys])
    victim: list[Any] = []
    nets = start_nets(settings, "victim", victim)
    try:
        token = Challenge(keys, routing_key="k", exchange_name="e").token(
            "127.0.0.1", settings.rabbit_port)
        _publish_challenges(settings.rabbit_port, [token], reply_to=nets.consumer.queue)
        responder = nets._local_consumers[-1]
        assert wait_for(lambda: responder.bad_reply_to == 1, 5)
        assert nets.drops.counts == {} or "mesh" not in str(dict(nets.drops.counts))
        assert victim == []
        assert nets.local_link.stats.reconnects == 0
    finally:
        nets.stop()


# --------------------------------------------------------------------------- aliens, LAN cache


def _factory(settings: Settings, **kwargs: Any) -> ProducerFactoryChart:
    return ProducerFactoryChart(settings, local=local_broker(settings), grace_sec=30,
                                scout_timeout=0.5, **kwargs)


def _discover(factory: ProducerFactoryChart, payload: Any) -> None:
    factory.post_fifo(Event(signal=signals.CONNECTION_DISCOVERY, payload=payload))


def test_an_alien_is_adopted_only_after_its_scout_succeeds(tls_node, recorder) -> None:
    """One authentic event names an origin: the factory scouts it first (with the
    scout account), adopts it only if a node holding our key answers there, and
    does not scout a refused one again for a while."""
    key = Fernet.generate_key()
    real_password = "real-" + uuid.uuid4().hex
    settings = settings_for(5672, key=key, RABBIT_PASSWORD=real_password,
                            SCOUT_USER=SCOUT_USER, SCOUT_PASSWORD=SCOUT_PASSWORD)
    factory = _factory(settings)
    node_nets = start_nets(settings_for(tls_node.port, key=key), "alien_home")
    try:
        for _ in range(3):  # the same claim, again and again
            _discover(factory, ConnectionDiscoveryPayload([recorder.hostport], [], "alien"))
        assert wait_for(lambda: factory.refused >= 1 and not factory.vetting(), 10)
        assert factory.peers() == []
        assert len(recorder.logins) == 1  # scouted once, not forever
        assert not recorder.saw(real_password)  # the recorder got the scout account only
        # a real node of our mesh at the origin: adopted, as an alien
        _discover(factory, ConnectionDiscoveryPayload([f"127.0.0.1:{tls_node.port}"], [], "alien"))
        assert wait_for(lambda: factory.peers(), 10)
        assert factory.peers()[0].dispatcher == "alien"
        assert factory.peers()[0].address.port == tls_node.port
        assert factory.peers()[0].address.user == "guest"  # the real login, now it is proven
    finally:
        factory.stop()
        node_nets.stop()
    assert PROBER.wait_idle(5)


def test_a_lan_cache_entry_is_trusted_only_after_a_scout(mesh_env, recorder) -> None:
    settings = load_settings()
    factory = _factory(settings)
    try:
        payload = tagged(ConnectionDiscoveryPayload([recorder.hostport], [], "lan_chart"),
                         None, unverified=True)
        _discover(factory, payload)
        assert wait_for(lambda: factory.refused >= 1 and not factory.vetting(), 10)
        assert factory.peers() == []
        assert len(recorder.logins) == 1
    finally:
        factory.stop()
    assert PROBER.wait_idle(5)


def test_the_number_of_peers_is_bounded(mesh_env) -> None:
    settings = load_settings()
    ports = [free_port() for _ in range(3)]
    factory = _factory(settings, max_peers=2)
    try:
        _discover(factory, ConnectionDiscoveryPayload([f"127.0.0.1:{p}" for p in ports], [],
                                                      "man_net_chart"))
        assert wait_for(lambda: len(factory.peers()) == 2 and factory.refused >= 1, 10)
    finally:
        factory.stop()


def test_no_dns_lookup_on_the_io_thread(mesh_env, monkeypatch) -> None:
    """The alien check runs on the I/O thread: a name it has not resolved yet is
    handed to discovery (which resolves it on its own thread), never looked up."""
    settings = load_settings()
    nets = MirosNets(name="dns", settings=settings, tx_routing_key="a", rx_routing_key="a",
                     deliver=lambda e: True)
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def spy(host: Any, *args: Any, **kwargs: Any) -> Any:
        flags = kwargs.get("flags", args[4] if len(args) > 4 else 0)
        if not flags & socket.AI_NUMERICHOST:
            looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    aliens: list[str] = []
    nets.on_alien = aliens.append
    name = f"peer-{uuid.uuid4().hex[:8]}.invalid"
    nets._check_origin(f"{name}:5672")
    nets._check_origin("10.0.0.77:5672")
    assert aliens == [f"{name}:5672", "10.0.0.77:5672"]
    assert looked_up == []


# --------------------------------------------------------------------------- channels


def test_a_channel_error_does_not_close_the_shared_connection(mesh_env) -> None:
    settings = load_settings()
    taken = f"miros.test.security.{uuid.uuid4().hex[:8]}"
    params = pika.ConnectionParameters("127.0.0.1", settings.rabbit_port,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as blocking:
        blocking.channel().queue_declare(taken, durable=True, arguments={"x-expires": 60_000})
        link = LINKS.acquire(local_broker(settings))
        received: list[bytes] = []
        exchange = f"miros.test.security.x.{uuid.uuid4().hex[:8]}"
        good = Consumer(exchange=exchange, routing_keys=["k"],
                        on_message=lambda body: received.append(body) or True)
        bad = Consumer(exchange=exchange, routing_keys=["k"], queue=taken,
                       on_message=lambda body: True)  # exclusive: 405/406 from the broker
        try:
            link.add_consumer(good)
            assert good.ready.wait(10)
            connection = link._connection
            link.add_consumer(bad)
            assert wait_for(lambda: bad.channel_failures >= 1, 10)
            assert link.publish(exchange, "k", b"still here")
            assert wait_for(lambda: received == [b"still here"], 10)
            assert link._connection is connection and link.stats.reconnects == 0
            assert link.connected.is_set()
        finally:
            link.remove_consumer(bad)
            link.remove_consumer(good)
            LINKS.release(link, flush_timeout=0)
            blocking.channel().queue_delete(taken)


# --------------------------------------------------------------------------- terminal


def test_network_text_cannot_drive_the_terminal() -> None:
    from miros_rabbitmq.mesh.snoop import SnoopRecord, format_record

    osc_title = "\x1b]0;pwned\x07"
    osc_clipboard = "\x1b]52;c;cm0gLXJmIH4=\x07"
    name = f"evil{osc_title}\x1b[2J\r\u202e"
    text = f"[2026-11-30 01:00:00.000000] [{name}] e->go(){osc_clipboard} a->b\x9b1m"
    for kind in ("trace", "spy", "scribble"):
        for color in (False, True):
            line = format_record(SnoopRecord(kind, name, text), "snoop_trace", local=False,
                                 color=color)
            bare = line
            for code in ("\x1b[35m", "\x1b[34m", "\x1b[90m", "\x1b[0m"):
                bare = bare.replace(code, "")  # our own colours only
            assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c == "\u202e"
                           for c in bare), repr(line)
            assert "pwned" in line and "\\x1b" in line and "\\x07" in line  # shown, escaped
    assert printable("plain text [ok]") == "plain text [ok]"
    assert printable("a\nb\tc") == "a\\x0ab\\x09c"


# --------------------------------------------------------------------------- .env


def test_env_file_is_the_nearest_regular_file_upward(tmp_path, monkeypatch) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / ".env").write_text("RABBIT_USER=outer\n")
    (tmp_path / "a" / ".env").write_text("RABBIT_USER=middle\n")
    os.mkfifo(tmp_path / "a" / "b" / ".env")  # a FIFO: skipped, never opened
    (deep / ".env").mkdir()  # a folder named .env: skipped
    assert find_env_file(deep) == str(tmp_path / "a" / ".env")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        read_env_file(tmp_path / "a" / "b" / ".env")  # returns at once, no hang


def test_env_values_are_literal_and_precedence_is_args_env_file(tmp_path, monkeypatch) -> None:
    key_a, key_b, key_c = (Fernet.generate_key().decode() for _ in range(3))
    (tmp_path / ".env").write_text(
        "RABBIT_USER=from_file\nRABBIT_PASSWORD=${SECRET_ELSEWHERE}\n"
        f"MESH_ENCRYPTION_KEY={key_c}\nRABBIT_PORT=5999\n")
    monkeypatch.chdir(tmp_path)
    for name in ("RABBIT_USER", "RABBIT_PASSWORD", "MESH_ENCRYPTION_KEY", "RABBIT_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRET_ELSEWHERE", "must-not-be-copied")
    from_file = load_settings()
    assert from_file.rabbit_user == "from_file" and from_file.rabbit_port == 5999
    assert from_file.rabbit_password.reveal() == "${SECRET_ELSEWHERE}"  # no interpolation
    monkeypatch.setenv("RABBIT_USER", "from_env")
    monkeypatch.setenv("MESH_ENCRYPTION_KEY", key_b)
    from_env = load_settings()
    assert from_env.rabbit_user == "from_env" and from_env.mesh_keys[0].reveal() == key_b
    explicit = load_settings(rabbit_user="from_arg", mesh_encryption_key=key_a, rabbit_port=5000)
    assert (explicit.rabbit_user, explicit.mesh_keys[0].reveal(), explicit.rabbit_port) == (
        "from_arg", key_a, 5000)


def test_a_fifo_named_env_does_not_hang_start_up(tmp_path) -> None:
    os.mkfifo(tmp_path / ".env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBIT_", "MESH_"))}
    env |= {"RABBIT_USER": "u", "RABBIT_PASSWORD": "p",
            "MESH_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", "from miros_rabbitmq.config import load_settings; "
         "print(load_settings().rabbit_user)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "u"


# --------------------------------------------------------------------------- CLI secrets


def _cli(folder: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RABBIT_", "MESH_", "SNOOP_", "SCOUT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "miros_rabbitmq", *args], cwd=folder, env=env,
                          input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=60)


def test_init_reads_the_password_from_stdin_and_quotes_it(tmp_path) -> None:
    from dotenv import dotenv_values

    password = "s3cr'et $HOME # x"
    done = _cli(tmp_path, "init", "--password-stdin", "--scout-account", "mesh_scout",
                stdin=password + "\n")
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    values = dotenv_values(tmp_path / ".env", interpolate=False)
    assert values["RABBIT_PASSWORD"] == password
    assert values["SCOUT_USER"] == "mesh_scout" and len(values["SCOUT_PASSWORD"] or "") >= 24
    assert values["SCOUT_PASSWORD"] not in done.stdout + done.stderr
    assert stat.S_IMODE(os.stat(tmp_path / ".env").st_mode) == 0o600
    settings = load_settings(dotenv_path=str(tmp_path / ".env"), environ={})
    assert settings.rabbit_password.reveal() == password and settings.scout_user == "mesh_scout"
    loud = _cli(tmp_path, "init", "--force", "--password", "visible")
    assert loud.returncode == 0 and "process list" in loud.stderr


def test_discover_never_prints_a_url_password(tmp_path) -> None:
    assert _cli(tmp_path, "init").returncode == 0
    (tmp_path / "hosts.json").write_text(
        json.dumps({"hosts": [f"amqp://bob:hunter2@127.0.0.1:{free_port()}/%2F"]}))
    done = _cli(tmp_path, "discover", "--hosts", "hosts.json", "--timeout", "0.3")
    assert "hunter2" not in done.stdout + done.stderr
    assert "127.0.0.1" in done.stdout, done.stdout + done.stderr


def test_doctor_checks_the_scout_account(tls_node, tmp_path) -> None:
    key = Fernet.generate_key().decode()
    base = (f"RABBIT_USER=guest\nRABBIT_PASSWORD=guest\nRABBIT_PORT={tls_node.port}\n"
            f"MESH_ENCRYPTION_KEY={key}\n")
    (tmp_path / ".env").write_text(base + f"SCOUT_USER={SCOUT_USER}\n"
                                   f"SCOUT_PASSWORD={SCOUT_PASSWORD}\n")
    os.chmod(tmp_path / ".env", 0o600)
    good = _cli(tmp_path, "doctor")
    assert f"SCOUT_USER={SCOUT_USER} logs in" in good.stdout, good.stdout + good.stderr
    assert SCOUT_PASSWORD not in good.stdout + good.stderr
    (tmp_path / ".env").write_text(base + "SCOUT_USER=nobody_here\nSCOUT_PASSWORD=wrong-pw\n")
    bad = _cli(tmp_path, "doctor")
    assert bad.returncode != 0 and "rabbitmqctl add_user nobody_here" in bad.stdout
    assert "wrong-pw" not in bad.stdout + bad.stderr


def test_snoop_command_escapes_what_charts_send(mesh_env, tmp_path) -> None:
    """End to end: a chart of the mesh sends trace lines whose name and text
    carry OSC (title, clipboard) and CSI (clear screen) sequences; the watcher's
    `miros-rabbitmq snoop` prints them escaped."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["PYTHONPATH"] = str(ROOT)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "miros_rabbitmq", "snoop", "--trace", "--duration", "8"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    nets = None
    try:
        assert watcher.stderr is not None
        assert "snooping on" in watcher.stderr.readline()
        nets = start_nets(load_settings(), "evil")
        name = "evil\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIH4=\x07"
        text = f"[2026-11-30 01:00:00.000000] [{name}] e->go()\x1b[2J a->b"
        nets.transmit("snoop", [["trace", name, text]], network="snoop_trace")
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
        if nets is not None:
            nets.stop()
    assert "pwned" in out, out + err
    assert "\\x1b]0;pwned\\x07" in out
    without_colours = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "\x1b" not in without_colours and "\x07" not in without_colours


# --------------------------------------------------------------------------- the default scout account

REAL_USER = "real_user"
REAL_PASSWORD = "real-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def bare_node() -> Iterator[RabbitNode]:
    """A RabbitMQ node without the scout account (a broker nobody prepared), whose
    only user is REAL_USER."""
    from prereq import need_rabbitmq_server

    need_rabbitmq_server()
    node = RabbitNode(f"security-bare-{os.getpid()}", username=REAL_USER, password=REAL_PASSWORD,
                      scout_account=False)
    try:
        node.start(120)
        yield node
    finally:
        stop_nodes([node])
        node.close()


def test_by_default_scouts_send_the_scout_account_only(recorder, mesh_env, tmp_path) -> None:
    """With nothing configured, a LAN host that opens the AMQP port sees the
    well-known scout account from every kind of scout (a host, a LAN cache
    entry, an alien, a hosts file), never RABBIT_USER's password."""
    from miros_rabbitmq.discovery.discovery import discover_once
    from miros_rabbitmq.wire.names import DEFAULT_SCOUT_PASSWORD, DEFAULT_SCOUT_USER

    real_password = "real-" + uuid.uuid4().hex
    settings = settings_for(5672, RABBIT_USER="real_user", RABBIT_PASSWORD=real_password)
    assert (settings.scout_user, settings.scout_password.reveal()) == (
        DEFAULT_SCOUT_USER, DEFAULT_SCOUT_PASSWORD)
    assert not settings.scout_with_rabbit_login
    credentials = ScoutCredentials(settings)
    assert "miros_scout" in repr(credentials)
    assert not scout_once(credentials, recorder.hostport, timeout=0.5).ok  # a host
    factory = _factory(settings)
    try:
        _discover(factory, tagged(ConnectionDiscoveryPayload([recorder.hostport], [], "lan_chart"),
                                  None, unverified=True))  # a LAN cache entry
        assert wait_for(lambda: factory.refused >= 1 and not factory.vetting(), 10)
        factory._refused.clear()  # the same address again, at once
        _discover(factory, ConnectionDiscoveryPayload([recorder.hostport], [], "alien"))
        assert wait_for(lambda: factory.refused >= 2 and not factory.vetting(), 10)
        assert factory.peers() == []
    finally:
        factory.stop()
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"hosts": [recorder.hostport,
                                           f"amqp://nobody@{recorder.hostport}/%2F"]}))
    discover_once(hosts_file=str(hosts), timeout=0.5, settings=settings)  # a hosts file
    assert wait_for(lambda: len(recorder.logins) >= 5, 5), len(recorder.logins)
    assert all(b"miros_scout" in login for login in recorder.logins), recorder.logins
    assert not recorder.saw(real_password) and not recorder.saw("real_user")
    assert PROBER.wait_idle(5)


def test_an_entry_with_its_own_login_is_scouted_with_it(recorder) -> None:
    """The user wrote amqp://user:pass@host for that broker: the scout logs in
    with it (and the scout account is not sent there)."""
    settings = settings_for(5672, RABBIT_PASSWORD="real-secret-pw")
    scout_once(ScoutCredentials(settings), f"amqp://bob:bob-pw@{recorder.hostport}/%2F", 0.5)
    assert wait_for(lambda: recorder.logins, 5)
    assert recorder.saw("bob-pw") and not recorder.saw("miros_scout")
    assert not recorder.saw("real-secret-pw")
    assert PROBER.wait_idle(5)


def test_the_opt_out_scouts_with_the_rabbit_login_as_0_2_did(recorder) -> None:
    real_password = "real-" + uuid.uuid4().hex
    settings = settings_for(5672, RABBIT_PASSWORD=real_password,
                            MIROS_RABBITMQ_SCOUT_WITH_RABBIT_LOGIN="1")
    assert settings.scout_with_rabbit_login
    scout_once(ScoutCredentials(settings), recorder.hostport, timeout=0.5)
    assert wait_for(lambda: recorder.logins, 5)
    assert recorder.saw(real_password) and not recorder.saw("miros_scout")
    with pytest.raises(ConfigurationError, match="contradict"):
        settings_for(5672, MIROS_RABBITMQ_SCOUT_WITH_RABBIT_LOGIN="1", SCOUT_USER="s",
                     SCOUT_PASSWORD="p")
    # SCOUT_PASSWORD alone: the miros_scout account with another password
    assert settings_for(5672, SCOUT_PASSWORD="own-pw").scout_user == "miros_scout"
    assert PROBER.wait_idle(5)


def test_a_broker_without_the_scout_account_is_not_adopted_until_it_has_one(
        bare_node, tmp_path, caplog) -> None:
    """A node of our mesh runs on a broker without the scout account: scouts get
    SCOUT_REFUSED, nothing is adopted, one WARNING per host gives the commands.
    Those commands, run there, make the same broker found and adopted, with
    the real login."""
    import logging
    import shlex

    from miros_rabbitmq.discovery.discovery import NO_SCOUT_ACCOUNT, classify
    from miros_rabbitmq.mesh.challenge import scout_account_commands
    from miros_rabbitmq.wire.names import ProbeOutcome

    key = Fernet.generate_key()
    settings = settings_for(5672, key=key, RABBIT_USER=REAL_USER, RABBIT_PASSWORD=REAL_PASSWORD)
    node_nets = start_nets(settings_for(bare_node.port, key=key, RABBIT_USER=REAL_USER,
                                        RABBIT_PASSWORD=REAL_PASSWORD), "bare_home")
    entry = f"127.0.0.1:{bare_node.port}"
    factory = _factory(settings)
    caplog.set_level(logging.WARNING, logger="miros_rabbitmq")
    try:
        for _ in range(2):
            result = scout_once(ScoutCredentials(settings), entry)
            assert result.outcome is ProbeOutcome.SCOUT_REFUSED, result
            assert classify(result.outcome) == NO_SCOUT_ACCOUNT
        _discover(factory, ConnectionDiscoveryPayload([entry], [], "alien"))
        assert wait_for(lambda: factory.refused >= 1 and not factory.vetting(), 10)
        assert factory.peers() == []
        warnings = [r.getMessage() for r in caplog.records
                    if "refused the scout account" in r.getMessage()]
        assert len(warnings) == 1, warnings  # one per host
        assert "rabbitmqctl add_user miros_scout 'miros_scout'" in warnings[0]
        assert REAL_PASSWORD not in caplog.text
        # the fix the warning names, run on that broker
        for command in scout_account_commands().split("; "):
            bare_node.ctl(*shlex.split(command)[1:])
        assert scout_once(ScoutCredentials(settings), entry).ok
        factory._refused.clear()  # no 60 s wait for the test
        _discover(factory, ConnectionDiscoveryPayload([entry], [], "alien"))
        assert wait_for(lambda: factory.peers(), 10)
        peer = factory.peers()[0]
        assert (peer.address.user, peer.address.port) == (REAL_USER, bare_node.port)
        assert wait_for(lambda: peer.link.connected.is_set(), 10), peer.link.last_error
    finally:
        factory.stop()
        node_nets.stop()
        bare_node.ctl("delete_user", "miros_scout", check=False)  # bare again
    assert PROBER.wait_idle(5)


def test_doctor_checks_the_default_scout_account(bare_node, tls_node, tmp_path) -> None:
    key = Fernet.generate_key().decode()
    for port, user, password, ok in ((tls_node.port, "guest", "guest", True),
                                     (bare_node.port, REAL_USER, REAL_PASSWORD, False)):
        (tmp_path / ".env").write_text(f"RABBIT_USER={user}\nRABBIT_PASSWORD={password}\n"
                                       f"RABBIT_PORT={port}\nMESH_ENCRYPTION_KEY={key}\n")
        os.chmod(tmp_path / ".env", 0o600)
        done = _cli(tmp_path, "doctor")
        if ok:
            assert "SCOUT_USER=miros_scout logs in" in done.stdout, done.stdout + done.stderr
        else:
            assert done.returncode != 0
            assert "refused the scout account 'miros_scout'" in done.stdout, done.stdout
            assert "rabbitmqctl add_user miros_scout 'miros_scout'" in done.stdout
            assert REAL_PASSWORD not in done.stdout + done.stderr


def test_init_names_the_default_scout_account(tmp_path) -> None:
    done = _cli(tmp_path, "init")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / ".env").read_text()
    assert "rabbitmqctl add_user miros_scout 'miros_scout'" in text
    assert "miros_scout" in done.stdout
    settings = load_settings(dotenv_path=str(tmp_path / ".env"), environ={})
    assert settings.scout_user == "miros_scout" and not settings.scout_with_rabbit_login
