"""The scout challenge on the network: the responder of every node, the prober of a scout.

The protocol itself (formats, binding to the probed address and port,
expiry) is :mod:`miros_rabbitmq.wire.challenge`; this module runs it:

* every running :class:`~miros_rabbitmq.mesh.nets.MirosNets` installs a
  *responder* (:func:`install_responder`): an exclusive queue of its own on
  its local broker, bound to :data:`SCOUT_EXCHANGE`, an exchange used for
  nothing else, so a challenge is never parsed as a mesh event;
* a prober (:class:`ScoutCredentials`) opens a short-lived connection to the
  address (logging in with the scout account, see ``docs/security.md``), publishes a challenge naming the address and port
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

from miros_rabbitmq.config import SCOUT_WITH_RABBIT_LOGIN, Secret, Settings, load_settings
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
from miros_rabbitmq.wire.names import (
    DEFAULT_SCOUT_PASSWORD,
    DEFAULT_SCOUT_USER,
    EXCHANGE_TYPE,
    SCOUT_EXCHANGE,
    SCOUT_PERMISSIONS,
    ProbeOutcome,
)

if TYPE_CHECKING:
    from miros_rabbitmq.mesh.nets import MirosNets

__all__ = [
    "SCOUT_EXCHANGE",
    "Challenge",
    "ResponderGuard",
    "ScoutCredentials",
    "answer",
    "install_responder",
    "scout_account_commands",
]

logger = logging.getLogger(__name__)

SCOUT_EXCHANGE_TYPE = EXCHANGE_TYPE  # the scout exchange is a topic exchange like the others
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
#: hosts already warned about a refused scout account (one WARNING per host)
_refused_warned: set[str] = set()
_REFUSED_WARNED_MAX = 4096
_warn_lock = threading.Lock()


def scout_account_commands(user: str = DEFAULT_SCOUT_USER, password: str | None = None) -> str:
    """The rabbitmqctl commands that create the scout account ``user`` on a broker.

    The default account's password is public, so it is spelled out; any other
    shows as ``'<SCOUT_PASSWORD>'``."""
    if password is None:
        password = DEFAULT_SCOUT_PASSWORD if user == DEFAULT_SCOUT_USER else "<SCOUT_PASSWORD>"
    configure, write, read = SCOUT_PERMISSIONS
    return (f"rabbitmqctl add_user {user} '{password}'; rabbitmqctl set_permissions -p / "
            f"{user} '{configure}' '{write}' '{read}'")


class ScoutCredentials:
    """Login and mesh key for scouting, read from ``.env`` / the environment.

    The seed's ``RabbitTopicPublisherMaker`` role: a scout asks it for a probe
    and never sees a password or a key. One instance can serve many scouts.

    Which login a probe sends (docs/security.md, "The scout account"):

    * the scout account (``SCOUT_USER`` / ``SCOUT_PASSWORD``, default the
      well-known ``miros_scout``), for every address that has not proved our
      key: a bare host, ``host:port``, a LAN neighbour, a LAN cache entry, an
      alien, an ``amqp://`` URL without a password;
    * the entry's own login, for an ``amqp://user:pass@host`` URL (the user
      wrote it for that broker), or when ``own_login`` is True (the settings
      carry such an entry's login);
    * ``RABBIT_USER``'s, as 0.2 did, only with
      ``MIROS_RABBITMQ_SCOUT_WITH_RABBIT_LOGIN=1`` (warned once).

    A broker that refuses the scout account gives the outcome
    ``ProbeOutcome.SCOUT_REFUSED`` and one WARNING per host naming the
    commands that create it. The real ``RABBIT_USER`` login goes to a broker
    only once a node there answered the challenge (discovery adopts it then).
    """

    def __init__(self, settings: Settings | None = None, *, own_login: bool = False) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.own_login = own_login
        self._warn_refused = True  # off for doctor, which reports the refusal itself
        self.identity = f"scout.{uuid.uuid4().hex[:12]}"
        self._keyring = _keyring(self.settings.mesh_keys)

    def __repr__(self) -> str:
        settings = self.settings
        user = settings.rabbit_user if self.own_login or settings.scout_with_rabbit_login \
            else settings.scout_user
        return f"ScoutCredentials(user={user!r}, keys=******)"

    def _uses_scout_account(self, address: BrokerAddress) -> bool:
        return not (self.own_login or address.own_login or self.settings.scout_with_rabbit_login)

    def address(self, entry: str) -> BrokerAddress:
        """``host``, ``host:port``, a hostname or an amqp[s]:// URL, with the login
        a probe uses; raises PeerAddressError."""
        address = parse_peer(entry, self.settings)
        settings = self.settings
        if self._uses_scout_account(address):
            return replace(address, user=settings.scout_user, password=settings.scout_password)
        if settings.scout_with_rabbit_login and not (self.own_login or address.own_login) \
                and address.tls is None:
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
        address = self.address(entry)
        if self._uses_scout_account(address):
            on_done = self._refusal_named(address, on_done)
        return probe(address, exchange=SCOUT_EXCHANGE, routing_key=routing_key,
                     body=challenge.token, accept=challenge.accept, timeout=timeout,
                     on_done=on_done)

    def _refusal_named(self, address: BrokerAddress,
                       on_done: Callable[[ProbeResult], None]) -> Callable[[ProbeResult], None]:
        """``on_done`` that turns a refused login into SCOUT_REFUSED (and warns once)."""
        user = self.settings.scout_user

        def done(result: ProbeResult) -> None:
            if result.outcome is ProbeOutcome.AUTH_REFUSED:
                if self._warn_refused:
                    _warn_scout_refused(address.hostport, user)
                result = replace(result, outcome=ProbeOutcome.SCOUT_REFUSED,
                                 reason=f"the broker refused the scout account {user!r} "
                                        f"(create it there: {scout_account_commands(user)})")
            on_done(result)
        return done


def _warn_scout_refused(hostport: str, user: str) -> None:
    with _warn_lock:
        if hostport in _refused_warned:
            return
        if len(_refused_warned) >= _REFUSED_WARNED_MAX:
            _refused_warned.clear()
        _refused_warned.add(hostport)
    logger.warning("the broker at %s refused the scout account %r, so nodes there cannot be "
                   "found (and none is adopted). Create it on that broker: %s "
                   "(see docs/security.md)", hostport, user, scout_account_commands(user))


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
    logger.warning("%s=1: scouting %s with RABBIT_USER's login over plain AMQP: whoever "
                   "listens there can read it. Unset it to scout with the scout account, or "
                   "use TLS; see docs/security.md", SCOUT_WITH_RABBIT_LOGIN, address.hostport)


def check_scout_account(settings: Settings, *, timeout: float = 3.0) -> tuple[bool | None, str]:
    """Can scouts use this broker (``RABBIT_HOST:RABBIT_PORT``)? ``(verdict, detail)``.

    A real scout of the local broker with the scout account: True when the
    broker takes the login and lets it publish a challenge (whether or not a
    node answers), False when it refuses it (the detail names the commands
    that create it), None when the opt-out is on (no scout account in use).
    Blocks at most ``timeout`` seconds (plus the probe's clean-up).
    """
    if settings.scout_with_rabbit_login:
        return None, (f"{SCOUT_WITH_RABBIT_LOGIN}=1: scouts send RABBIT_USER's login to every "
                      "neighbour they try (unsafe on an untrusted LAN; docs/security.md)")
    try:
        credentials = ScoutCredentials(settings)
    except Exception:  # bad keys (reported elsewhere): the login is what is checked here
        credentials = ScoutCredentials(replace(settings, mesh_keys=(
            Secret(Fernet.generate_key()),)))
    credentials._warn_refused = False
    done: list[ProbeResult] = []
    finished = threading.Event()

    def on_done(result: ProbeResult) -> None:
        done.append(result)
        finished.set()

    host = f"[{settings.rabbit_host}]" if ":" in settings.rabbit_host else settings.rabbit_host
    entry = f"{host}:{settings.rabbit_port}"
    try:
        attempt = credentials.probe(entry, routing_key="miros.doctor", exchange_name="",
                                    timeout=timeout, on_done=on_done)
    except Exception as error:
        return False, str(error)
    if not finished.wait(timeout + 5.0):
        attempt.cancel()
        return False, "the scout never finished"
    attempt.closed.wait(3.0)
    result = done[0]
    user = settings.scout_user
    if result.outcome in (ProbeOutcome.ANSWERED, ProbeOutcome.NO_ANSWER,
                          ProbeOutcome.NO_RESPONDER):
        return True, f"SCOUT_USER={user} logs in and may publish challenges"
    if result.outcome is ProbeOutcome.SCOUT_REFUSED:
        return False, f"the broker refused the scout account {user!r}"
    return False, f"SCOUT_USER={user}: {result.reason}"
