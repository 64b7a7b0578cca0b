"""The scout challenge: does a node on that broker hold our mesh key?

A broker that accepts our credentials proves little; a node that can read
what we encrypted proves it shares our mesh. The protocol:

* every running :class:`~miros_rabbitmq.mesh.nets.MirosNets` installs a
  *responder* (:func:`install_responder`): an exclusive queue of its own on
  its local broker, bound to :data:`SCOUT_EXCHANGE`, an exchange used for
  nothing else, so a challenge is never parsed as a mesh event;
* a prober (:class:`ScoutCredentials`) opens a short-lived connection to the
  address, publishes a :class:`Challenge` (a random nonce encrypted with the
  mesh key, signal ``SCOUT_CHALLENGE``) with ``reply_to`` set to RabbitMQ's
  direct reply-to, and waits;
* a responder that decrypts the challenge answers through the reply-to with
  the nonce, its identity and its broker, encrypted with the same key under
  the signal ``SCOUT_ANSWER``; one that cannot decrypt it counts a drop and
  stays silent;
* the prober accepts only an answer that authenticates under its key, is an
  answer (a reflected challenge is not) and carries its nonce.

Both messages are JSON inside the token, whatever serializer the mesh uses
for events, so nodes with different event serializers still recognise each
other. The transport (pika) lives in :mod:`miros_rabbitmq.transport`.
"""

from __future__ import annotations

import copy
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from miros_rabbitmq.config import Settings, load_settings
from miros_rabbitmq.errors import DecodeError
from miros_rabbitmq.transport import BrokerAddress, Probe, ProbeResult, Responder, parse_peer, probe
from miros_rabbitmq.wire.codec import JSON, Codec, Envelope

if TYPE_CHECKING:
    from miros_rabbitmq.mesh.nets import MirosNets

__all__ = [
    "SCOUT_EXCHANGE",
    "CHALLENGE_SIGNAL",
    "ANSWER_SIGNAL",
    "Challenge",
    "ScoutCredentials",
    "answer",
    "install_responder",
]

logger = logging.getLogger(__name__)

SCOUT_EXCHANGE = "miros.scout.exchange"
SCOUT_EXCHANGE_TYPE = "topic"
CHALLENGE_SIGNAL = "SCOUT_CHALLENGE"
ANSWER_SIGNAL = "SCOUT_ANSWER"
NONCE_BYTES = 16


def _json_twin(codec: Codec) -> Codec:
    """The same keys (as they are now, rotation included) with the JSON serializer."""
    twin = copy.copy(codec)
    twin.serializer = JSON
    twin.ttl = None  # a replayed challenge earns the replayer nothing: no age limit needed
    return twin


# --------------------------------------------------------------------------- node side


def answer(codec: Codec, token: bytes, *, identity: str, origin: str) -> bytes:
    """The answer to a challenge token; raises DecodeError for anything else."""
    envelope = codec.decode(token)
    payload = envelope.payload
    if envelope.signal_name != CHALLENGE_SIGNAL or not isinstance(payload, dict):
        raise DecodeError("garbage", "not a scout challenge")
    nonce = payload.get("nonce")
    if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES:
        raise DecodeError("garbage", "scout challenge without a nonce")
    return codec.encode(Envelope(
        ANSWER_SIGNAL,
        {"nonce": nonce, "node": identity, "origin": origin, "challenger": envelope.sender},
        identity, 0, origin))


def install_responder(nets: MirosNets) -> Responder:
    """Answer scout challenges for ``nets`` on its local broker (call after start).

    Challenges that do not decrypt under the mesh key are counted in
    ``nets.drops`` (network ``scout``) and never answered; nothing raises.
    """

    def on_request(token: bytes) -> bytes | None:
        try:
            return answer(_json_twin(nets.networks["mesh"].codec), token,
                          identity=nets.identity, origin=nets.origin)
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
    """One challenge: the token to publish and the test of an answer."""

    def __init__(self, codec: Codec, *, routing_key: str, exchange_name: str,
                 challenger: str = "") -> None:
        self._codec = codec
        self.nonce = secrets.token_hex(NONCE_BYTES)
        self.token = codec.encode(Envelope(
            CHALLENGE_SIGNAL,
            {"nonce": self.nonce, "routing_key": routing_key, "exchange_name": exchange_name},
            challenger, 0, ""))
        self.responder: str | None = None
        self.responder_origin: str | None = None

    def accept(self, token: bytes) -> bool:
        """True only for an authentic answer to this challenge (never raises)."""
        try:
            envelope = self._codec.decode(token)
        except DecodeError:
            return False
        payload: Any = envelope.payload
        if envelope.signal_name != ANSWER_SIGNAL or not isinstance(payload, dict):
            return False
        nonce = payload.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce, self.nonce):
            return False
        self.responder = envelope.sender
        self.responder_origin = envelope.origin
        return True


class ScoutCredentials:
    """Credentials and mesh key for scouting, read from ``.env`` / the environment.

    The seed's ``RabbitTopicPublisherMaker`` role: a scout asks it for a probe
    and never sees a password or a key. One instance can serve many scouts.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.identity = f"scout.{uuid.uuid4().hex[:12]}"
        self._codec = Codec(self.settings.mesh_keys, serializer=JSON)

    def __repr__(self) -> str:
        return f"ScoutCredentials(user={self.settings.rabbit_user!r}, keys=******)"

    def address(self, entry: str) -> BrokerAddress:
        """``host``, ``host:port``, a hostname or an amqp:// URL; raises PeerAddressError."""
        return parse_peer(entry, self.settings)

    def challenge(self, *, routing_key: str, exchange_name: str) -> Challenge:
        return Challenge(self._codec, routing_key=routing_key, exchange_name=exchange_name,
                         challenger=self.identity)

    def probe(self, entry: str, *, routing_key: str, exchange_name: str, timeout: float,
              on_done: Callable[[ProbeResult], None]) -> Probe:
        """Challenge whatever listens at ``entry``; ``on_done`` gets the verdict
        on the prober thread within ``timeout`` seconds. Raises PeerAddressError."""
        challenge = self.challenge(routing_key=routing_key, exchange_name=exchange_name)
        return probe(self.address(entry), exchange=SCOUT_EXCHANGE, routing_key=routing_key,
                     body=challenge.token, accept=challenge.accept, timeout=timeout,
                     on_done=on_done)
