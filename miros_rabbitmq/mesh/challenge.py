"""The scout challenge on the network: the responder of every node, the prober of a scout.

The protocol itself (formats, binding to the probed address and port,
expiry) is :mod:`miros_rabbitmq.wire.challenge`; this module runs it:

* every running :class:`~miros_rabbitmq.mesh.nets.MirosNets` installs a
  *responder* (:func:`install_responder`): an exclusive queue of its own on
  its local broker, bound to :data:`SCOUT_EXCHANGE`, an exchange used for
  nothing else, so a challenge is never parsed as a mesh event;
* a prober (:class:`ScoutCredentials`) opens a short-lived connection to the
  address (logging in with the scout account when one is configured, see
  ``docs/security.md``), publishes a challenge naming the address and port
  that connection reached, with ``reply_to`` set to RabbitMQ's direct
  reply-to, and waits;
* a responder answers only a challenge that decrypts under its mesh key, is
  fresh, and names its own broker (a relay in front of it is refused); it
  answers through the direct reply-to only (never into a named queue).

Cost control: one challenge reaches every chart of a node (each has a
responder). In a process, a challenge (the same token) is decrypted at most
once per key set, and all responders of the process share one budget of
:data:`RESPONDER_RATE` decryptions per second (burst :data:`RESPONDER_BURST`);
beyond it challenges are dropped, counted and logged, before any
cryptography. A captured challenge replayed in a loop therefore costs a hash
and a dictionary look-up per delivery.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, MultiFernet

from miros_rabbitmq.config import Secret, Settings, load_settings
from miros_rabbitmq.errors import DecodeError
from miros_rabbitmq.transport import (
    BrokerAddress,
    Probe,
    ProbeResult,
    Responder,
    local_addresses,
    parse_peer,
    probe,
)
from miros_rabbitmq.wire import challenge as protocol
from miros_rabbitmq.wire.challenge import CHALLENGE_TTL, CLOCK_SKEW, ChallengeBody

if TYPE_CHECKING:
    from miros_rabbitmq.mesh.nets import MirosNets

__all__ = [
    "SCOUT_EXCHANGE",
    "Challenge",
    "ResponderGuard",
    "ScoutCredentials",
    "answer",
    "install_responder",
]

logger = logging.getLogger(__name__)

SCOUT_EXCHANGE = "miros.scout.exchange"
SCOUT_EXCHANGE_TYPE = "topic"
#: challenges a process decrypts per second, all its responders together
RESPONDER_RATE = 50.0
RESPONDER_BURST = 100
#: challenges remembered (by digest) to decrypt each one once per process and key set
SEEN_MAX = 8192


def _keyring(keys: Any) -> MultiFernet:
    return MultiFernet([Fernet(k.reveal() if isinstance(k, Secret) else k) for k in keys])


def _mesh_keyring(nets: MirosNets) -> Any:
    """The mesh codec's keys as they are now (rotation included)."""
    codec = nets.networks["mesh"].codec
    fernet = getattr(codec, "_fernet", None)  # the codec's MultiFernet: follows set_keys
    return fernet if fernet is not None else _keyring(nets.settings.mesh_keys)


# --------------------------------------------------------------------------- node side


def answer(keyring: Any, token: bytes, *, identity: str, origin: str,
           addresses: Any = (), port: int | None = None, now: float | None = None) -> bytes:
    """The answer to a challenge token; raises DecodeError for anything else
    (reason ``wrong_address`` for a challenge sent to another broker, when
    ``port`` is given)."""
    now = time.time() if now is None else now
    body = protocol.decode_challenge(keyring, token, now=now)
    if port is not None and not protocol.bound_here(body, addresses=addresses, port=port):
        raise DecodeError("wrong_address", "a challenge sent to another broker (a relay?)")
    return protocol.encode_answer(keyring, body, node=identity, origin=origin, now=now)


class ResponderGuard:
    """Process-wide: each challenge decrypted once per key set, and a budget of
    decryptions per second shared by every responder (a token bucket)."""

    def __init__(self, rate: float = RESPONDER_RATE, burst: int = RESPONDER_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, token: bytes, keyset: bytes) -> str | None:
        """None to go on (decrypt), else the reason to drop it unread."""
        digest = hashlib.sha256(keyset + token).digest()
        now = time.monotonic()
        with self._lock:
            horizon = now - (CHALLENGE_TTL + CLOCK_SKEW)
            while self._seen and next(iter(self._seen.values())) < horizon:
                self._seen.popitem(last=False)
            if digest in self._seen:
                return "replay"
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1.0 or len(self._seen) >= SEEN_MAX:
                return "rate_limited"
            self._tokens -= 1.0
            self._seen[digest] = now
            return None


GUARD = ResponderGuard()


def _own_addresses(settings: Settings, origin: str) -> frozenset[str]:
    """This machine's addresses, plus what RABBIT_HOST and our origin resolve to
    (resolved now, on the starting chart's thread, never on an I/O thread)."""
    found = set(local_addresses())
    for host in {settings.rabbit_host, origin.rpartition(":")[0].strip("[]")}:
        if not host:
            continue
        try:
            for record in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
                found.add(str(record[4][0]))
        except (OSError, UnicodeError):
            continue
    return frozenset(found)


def install_responder(nets: MirosNets) -> Responder:
    """Answer scout challenges for ``nets`` on its local broker (call after start).

    Challenges that are refused (another key, expired, sent to another
    broker, replayed, over the rate) are counted in ``nets.drops`` (network
    ``scout``) and never answered; nothing raises.
    """
    addresses = _own_addresses(nets.settings, nets.origin)
    port = nets.local_address.port
    keyset = hashlib.sha256(b",".join(
        k.reveal().encode() for k in nets.settings.mesh_keys)).digest()

    def on_request(token: bytes) -> bytes | None:
        refused = GUARD.admit(token, keyset)
        if refused is not None:
            nets.drops.drop("scout", refused)
            return None
        try:
            return answer(_mesh_keyring(nets), token, identity=nets.identity, origin=nets.origin,
                          addresses=addresses, port=port)
        except DecodeError as error:
            nets.drops.drop("scout", error.reason)
            return None

    responder = Responder(exchange=SCOUT_EXCHANGE, exchange_type=SCOUT_EXCHANGE_TYPE,
                          routing_keys=("#",), on_request=on_request,
                          queue=f"miros.scout.{nets.identity}")
    nets.add_local_consumer(responder)
    return responder


# --------------------------------------------------------------------------- prober side


class Challenge:
    """One challenge: made for the address and port the probe reached, and the
    test of an answer."""

    def __init__(self, keyring: Any, *, routing_key: str, exchange_name: str,
                 challenger: str = "") -> None:
        self._keyring = keyring
        self.routing_key = routing_key
        self.exchange_name = exchange_name
        self.challenger = challenger
        self.body: ChallengeBody | None = None
        self.responder: str | None = None
        self.responder_origin: str | None = None

    def token(self, host: str, port: int) -> bytes:
        """The challenge for ``host:port`` (the transport calls it once connected)."""
        self.body = protocol.new_challenge(
            host=host, port=port, routing_key=self.routing_key,
            exchange_name=self.exchange_name, challenger=self.challenger, now=time.time())
        return protocol.encode_challenge(self._keyring, self.body)

    def accept(self, token: bytes) -> bool:
        """True only for an authentic answer to this challenge (never raises)."""
        if self.body is None:
            return False
        try:
            reply = protocol.decode_answer(self._keyring, token, expect=self.body)
        except DecodeError:
            return False
        self.responder = reply.node
        self.responder_origin = reply.origin
        return True


_unprotected_warned = False


class ScoutCredentials:
    """Login and mesh key for scouting, read from ``.env`` / the environment.

    The seed's ``RabbitTopicPublisherMaker`` role: a scout asks it for a probe
    and never sees a password or a key. One instance can serve many scouts.
    Probes log in with the scout account (``SCOUT_USER`` / ``SCOUT_PASSWORD``)
    when one is configured, so the real login only ever goes to brokers that
    proved they belong to the mesh.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.identity = f"scout.{uuid.uuid4().hex[:12]}"
        self._keyring = _keyring(self.settings.mesh_keys)

    def __repr__(self) -> str:
        user = self.settings.scout_user or self.settings.rabbit_user
        return f"ScoutCredentials(user={user!r}, keys=******)"

    def address(self, entry: str) -> BrokerAddress:
        """``host``, ``host:port``, a hostname or an amqp[s]:// URL, with the login
        a probe uses; raises PeerAddressError."""
        address = parse_peer(entry, self.settings)
        settings = self.settings
        if settings.scout_user and settings.scout_password is not None:
            return replace(address, user=settings.scout_user, password=settings.scout_password)
        if address.tls is None:
            _warn_unprotected(address)
        return address

    def challenge(self, *, routing_key: str, exchange_name: str) -> Challenge:
        return Challenge(self._keyring, routing_key=routing_key, exchange_name=exchange_name,
                         challenger=self.identity)

    def probe(self, entry: str, *, routing_key: str, exchange_name: str, timeout: float,
              on_done: Callable[[ProbeResult], None]) -> Probe:
        """Challenge whatever listens at ``entry``; ``on_done`` gets the verdict
        on the prober thread within ``timeout`` seconds. Raises PeerAddressError."""
        challenge = self.challenge(routing_key=routing_key, exchange_name=exchange_name)
        return probe(self.address(entry), exchange=SCOUT_EXCHANGE, routing_key=routing_key,
                     body=challenge.token, accept=challenge.accept, timeout=timeout,
                     on_done=on_done)


def _warn_unprotected(address: BrokerAddress) -> None:
    global _unprotected_warned
    if _unprotected_warned:
        return
    try:
        import ipaddress

        if ipaddress.ip_address(address.host).is_loopback:
            return
    except ValueError:
        pass
    _unprotected_warned = True
    logger.warning("scouting %s with RABBIT_USER's login over plain AMQP: whoever listens "
                   "there can read it. Set SCOUT_USER / SCOUT_PASSWORD (a scout-only "
                   "account) or use TLS; see docs/security.md", address.hostport)
