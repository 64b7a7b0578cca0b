"""The scout challenge, as bytes: message formats, binding, expiry. No I/O.

A scout asks "does a node on the broker I reached hold our mesh key?". The
question and the answer are Fernet tokens under the mesh key whose plaintext
is a magic prefix and a JSON object (whatever serializer the mesh uses for
events, so nodes with different serializers still recognise each other)::

    challenge  b"MRSC1?" {"nonce", "host", "port", "routing_key", "exchange_name",
                          "challenger", "issued"}
    answer     b"MRSC1!" {"nonce", "host", "port", "node", "origin", "challenger",
                          "issued"}

Why each field:

* ``nonce`` (128 random bits): an answer is good for one challenge only;
* ``host`` / ``port``: the address and port the scout's connection actually
  reached. A responder answers only a challenge naming one of its own
  addresses and its broker's port (:func:`bound_here`), and the scout accepts
  only an answer naming what it probed. A plain TCP relay in front of a real
  node (another address, or another port) therefore never passes as that
  node: the node behind it refuses to answer;
* ``issued`` (the challenger's clock, seconds): a challenge older than
  :data:`CHALLENGE_TTL` (or more than :data:`CLOCK_SKEW` in the future) is
  refused, so a captured challenge is worthless within seconds;
* the magic prefix: a challenge is not an answer (a reflected challenge
  proves nothing) and neither is a mesh envelope, a snoop line, or anything
  else encrypted under the same key.

The transport (pika, threads) and the rate limits live in
:mod:`miros_rabbitmq.mesh.challenge`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from cryptography.fernet import InvalidToken

from miros_rabbitmq.errors import DecodeError

__all__ = [
    "CHALLENGE_MAGIC",
    "ANSWER_MAGIC",
    "CHALLENGE_TTL",
    "CLOCK_SKEW",
    "MAX_TOKEN_BYTES",
    "ChallengeBody",
    "AnswerBody",
    "new_challenge",
    "encode_challenge",
    "decode_challenge",
    "encode_answer",
    "decode_answer",
    "bound_here",
]

CHALLENGE_MAGIC = b"MRSC1?"
ANSWER_MAGIC = b"MRSC1!"
NONCE_BYTES = 16
#: seconds a challenge may be answered after it was made (the scout's own
#: timeout is far shorter: 0.5 s by default)
CHALLENGE_TTL = 10.0
#: seconds a challenge may seem to come from the future (clocks of a LAN differ)
CLOCK_SKEW = 5.0
#: a challenge or an answer is a few hundred bytes; anything larger is refused
#: before any cryptography
MAX_TOKEN_BYTES = 4096
_MAX_TEXT = 255


class Keyring(Protocol):
    """What the protocol needs of the keys: cryptography's (Multi)Fernet."""

    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, token: bytes | str, ttl: int | None = None) -> bytes: ...


@dataclass(frozen=True)
class ChallengeBody:
    nonce: str
    host: str
    port: int
    routing_key: str
    exchange_name: str
    challenger: str
    issued: float


@dataclass(frozen=True)
class AnswerBody:
    nonce: str
    host: str
    port: int
    node: str
    origin: str
    challenger: str
    issued: float


def new_challenge(*, host: str, port: int, routing_key: str, exchange_name: str,
                  challenger: str, now: float) -> ChallengeBody:
    """A challenge with a fresh nonce, for the address and port actually reached."""
    return ChallengeBody(secrets.token_hex(NONCE_BYTES), host, int(port), routing_key,
                         exchange_name, challenger, float(now))


def _seal(keyring: Keyring, magic: bytes, fields: dict[str, Any]) -> bytes:
    return keyring.encrypt(magic + json.dumps(fields, separators=(",", ":")).encode())


def _open(keyring: Keyring, magic: bytes, token: bytes) -> dict[str, Any]:
    if not isinstance(token, (bytes, bytearray)) or len(token) > MAX_TOKEN_BYTES:
        raise DecodeError("too_big", "not a scout token (size)")
    try:
        plain = keyring.decrypt(bytes(token))
    except (InvalidToken, TypeError, ValueError):
        raise DecodeError("bad_key", "does not authenticate under our key") from None
    if not plain.startswith(magic):
        raise DecodeError("garbage", "not the expected scout message")
    try:
        fields = json.loads(plain[len(magic):])
    except (ValueError, UnicodeDecodeError):
        raise DecodeError("garbage", "scout message is not JSON") from None
    if not isinstance(fields, dict):
        raise DecodeError("garbage", "scout message is not an object")
    return fields


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise DecodeError("garbage", f"scout message without a valid {name}")
    return value


def _number(fields: dict[str, Any], name: str) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError("garbage", f"scout message without a valid {name}")
    return float(value)


def _nonce(fields: dict[str, Any]) -> str:
    nonce = _text(fields, "nonce")
    if len(nonce) != 2 * NONCE_BYTES:
        raise DecodeError("garbage", "scout message without a nonce")
    return nonce


def _fresh(issued: float, now: float) -> None:
    age = now - issued
    if age > CHALLENGE_TTL or age < -CLOCK_SKEW:
        raise DecodeError("expired", f"scout challenge {age:.1f} s old")


def encode_challenge(keyring: Keyring, body: ChallengeBody) -> bytes:
    return _seal(keyring, CHALLENGE_MAGIC, asdict(body))


def decode_challenge(keyring: Keyring, token: bytes, *, now: float) -> ChallengeBody:
    """The challenge in ``token``; raises DecodeError (reason ``too_big``,
    ``bad_key``, ``garbage`` or ``expired``)."""
    fields = _open(keyring, CHALLENGE_MAGIC, token)
    body = ChallengeBody(_nonce(fields), _text(fields, "host"), int(_number(fields, "port")),
                         _text(fields, "routing_key"), _text(fields, "exchange_name"),
                         _text(fields, "challenger"), _number(fields, "issued"))
    _fresh(body.issued, now)
    return body


def encode_answer(keyring: Keyring, challenge: ChallengeBody, *, node: str, origin: str,
                  now: float) -> bytes:
    """The answer to ``challenge``: its nonce, host and port, and who answers."""
    return _seal(keyring, ANSWER_MAGIC, asdict(AnswerBody(
        challenge.nonce, challenge.host, challenge.port, node, origin, challenge.challenger,
        float(now))))


def decode_answer(keyring: Keyring, token: bytes, *, expect: ChallengeBody) -> AnswerBody:
    """The answer in ``token`` if it answers ``expect`` (same nonce, host and
    port); raises DecodeError otherwise."""
    fields = _open(keyring, ANSWER_MAGIC, token)
    body = AnswerBody(_nonce(fields), _text(fields, "host"), int(_number(fields, "port")),
                      _text(fields, "node"), _text(fields, "origin"),
                      _text(fields, "challenger"), _number(fields, "issued"))
    if not hmac.compare_digest(body.nonce, expect.nonce):
        raise DecodeError("garbage", "the answer to another challenge")
    if (_ip(body.host), body.port) != (_ip(expect.host), expect.port):
        raise DecodeError("garbage", "an answer for another address")
    return body


def _ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        return host.lower()


def bound_here(challenge: ChallengeBody, *, addresses: Iterable[str], port: int) -> bool:
    """True when ``challenge`` was sent to this broker: to ``port``, and to a
    loopback address or one of ``addresses`` (this machine's, and the
    broker's configured host)."""
    if challenge.port != port:
        return False
    host = _ip(challenge.host)
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host in {_ip(a) for a in addresses}
