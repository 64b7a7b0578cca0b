"""Envelopes on the wire: serialize, then encrypt; authenticate, then deserialize.

Pure logic, no I/O: a :class:`Codec` turns an :class:`Envelope` into a Fernet
token and back. The plaintext inside the token is::

    b"M3" | u8 network | u64 epoch | u64 seq
         | u16 len(signal) | u16 len(sender) | u16 len(origin) | u16 len(causation)
         | u16 len(routing key)
         | signal name | sender id | origin | causation | routing key
         | body (the network's serializer)

The header carries what the receiver needs before it touches the body: the
network and routing key the token was made for (a token is refused on any
other network or under any other routing key), the signal name, the
sender's identity, its incarnation (``epoch``, random per sender) and
sequence number (own-message filter, replay filter, per-sender order) and
the sender's advertised broker (aliens), and the causation id: the id
(``sender:seq``) of the event whose handling transmitted this one, empty
when none (``miros-rabbitmq view`` draws causal chains from it). The time
the token was made is
Fernet's own authenticated timestamp. The body is deserialized only after
the token authenticated under one of the network's keys, so bytes from
anyone without a key never reach ``pickle``.

Fernet's ``ttl`` is not used: it refuses a token more than 60 s "in the
future" and, with a TTL, everything a paused receiver finds on resuming.
The codec checks the timestamp itself against ``max_age`` (default 6 h,
either direction); replays to a running receiver are caught by
:class:`~miros_rabbitmq.wire.replay.ReplayGuard` at any age.
"""

from __future__ import annotations

import base64
import binascii
import collections
import copyreg
import io
import json
import os
import pickle
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from miros_rabbitmq._miros import Event, make_event, rebuild_event, signal_number
from miros_rabbitmq.config import Secret
from miros_rabbitmq.errors import ConfigurationError, DecodeError, SerializationError
from miros_rabbitmq.wire.names import DEFAULT_MAX_AGE_SEC, DEFAULT_MAX_MESSAGE_BYTES, Network

__all__ = [
    "Envelope",
    "Codec",
    "Serializer",
    "PICKLE",
    "JSON",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_AGE_SEC",
    "make_event",
    "signal_number",
    "rebuild_event",
    "Network",
]

MAGIC = b"M3"
OLD_MAGIC = b"M2"  # 0.3 development builds: no network, route or epoch inside
_HEADER = struct.Struct("!2sBQQHHHHH")  # magic, network, epoch, seq, five string lengths
_NETWORK_IDS = {Network.MESH: 1, Network.SNOOP_TRACE: 2, Network.SNOOP_SPY: 3, Network.SCOUT: 4}
_NETWORK_OF_ID = {number: network for network, number in _NETWORK_IDS.items()}
_FERNET_VERSION = 0x80
_FERNET_MIN_BYTES = 57  # version, timestamp, IV, one AES block, HMAC


@dataclass(frozen=True)
class Serializer:
    """A named pair of functions turning a payload into bytes and back."""

    name: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _reduce_event(event: Event) -> tuple[Any, tuple[str, Any]]:
    return rebuild_event, (event.signal_name, event.payload)


# miros Events do not survive plain pickle (signal numbers are per process);
# our pickler carries them by name without touching the global copyreg table.
_dispatch_table = copyreg.dispatch_table.copy()
_dispatch_table[Event] = _reduce_event


def _pickle_dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _dispatch_table
    pickler.dump(obj)
    return buffer.getvalue()


PICKLE = Serializer("pickle", _pickle_dumps, pickle.loads)
"""Any picklable payload. Only key holders can make us unpickle (decrypt first)."""

JSON = Serializer(
    "json",
    lambda obj: json.dumps(obj, separators=(",", ":")).encode(),
    lambda data: json.loads(data.decode()),
)
"""Plain data only (dict, list, str, numbers, bool, None); never executes code on load."""


@dataclass(frozen=True)
class Envelope:
    """What one transmitted event, trace line, spy line or scout message carries.

    ``causation``: the id of the event whose handling sent this one ("" =
    none). ``epoch``: the sender's incarnation (0: none, as in scout
    messages). ``routing_key``: the key the sender publishes it under
    (checked by the receiver against the key it arrived with). ``sent_at``:
    the token's authenticated time (set on decode; ignored on encode, where
    the codec's clock stamps it).
    """

    signal_name: str
    payload: Any
    sender: str
    seq: int
    origin: str = ""
    causation: str = ""
    epoch: int = 0
    routing_key: str = ""
    sent_at: float = field(default=0.0, compare=False)

    @property
    def event_id(self) -> str:
        """This message's id as causation ids name it: ``sender:seq``."""
        return f"{self.sender}:{self.seq}"

    def header(self, network: Network) -> bytes:
        """The plaintext before the body: fixed fields, then the five strings."""
        strings = (self.signal_name.encode(), self.sender.encode(), self.origin.encode(),
                   self.causation.encode(), self.routing_key.encode())
        return _HEADER.pack(MAGIC, _NETWORK_IDS[network], self.epoch, self.seq,
                            *(len(s) for s in strings)) + b"".join(strings)


def _fernets(keys: Sequence[Secret | str | bytes]) -> list[Fernet]:
    """One Fernet per key, in order (the first encrypts); ConfigurationError for a bad key."""
    fernets = []
    for index, key in enumerate(keys):
        raw = key.reveal() if isinstance(key, Secret) else key
        try:
            fernets.append(Fernet(raw))
        except (ValueError, TypeError):
            # never echo the key itself
            raise ConfigurationError(
                f"encryption key #{index + 1} is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with: miros-rabbitmq keygen)"
            ) from None
    if not fernets:
        raise ConfigurationError("a network needs at least one encryption key")
    return fernets


_IV_BYTES = 16
_IVS_PER_DRAW = 256


class _IvPool:
    """Fernet IVs, drawn from ``os.urandom`` 256 at a time.

    Why: ``Fernet.encrypt`` calls ``os.urandom(16)`` for every token. That
    call gives up the GIL, and while a link's I/O thread is busy, getting
    it back cost ~19 us per event in a stream (measured with cProfile: more
    than the encryption itself). Every IV is still fresh OS randomness,
    used once and unknown to anyone before its token exists. No lock (wire
    code takes none): ``deque.popleft`` is atomic, so each IV goes to one
    caller; racing refills only draw more. A forked child empties its copy,
    so parent and child never use the same IV.
    """

    def __init__(self) -> None:
        self._ivs: collections.deque[bytes] = collections.deque()

    def take(self) -> bytes:
        try:
            return self._ivs.popleft()
        except IndexError:
            block = os.urandom(_IV_BYTES * _IVS_PER_DRAW)
            self._ivs.extend(block[i:i + _IV_BYTES] for i in range(0, len(block), _IV_BYTES))
            return self._ivs.popleft()

    def clear(self) -> None:
        self._ivs.clear()


_IV_POOL = _IvPool()
_CAN_PASS_IV = hasattr(Fernet, "_encrypt_from_parts")
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_IV_POOL.clear)


def _encrypt(fernet: Fernet, data: bytes, at: int) -> bytes:
    """A Fernet token of ``data`` made at ``at``, with an IV from the pool.

    ``Fernet._encrypt_from_parts`` is the one private call (cryptography
    offers no public way to pass the IV); without it, plain ``encrypt_at_time``.
    """
    if not _CAN_PASS_IV:  # pragma: no cover - a cryptography without it
        return fernet.encrypt_at_time(data, at)
    return fernet._encrypt_from_parts(data, at, _IV_POOL.take())


def _looks_like_v02(plaintext: bytes) -> bool:
    """0.2 sent miros's ``Event.dumps``: ``{"signal_name": ..., "payload": ...}``."""
    if not plaintext.startswith(b"{"):
        return False
    try:
        document = json.loads(plaintext.decode())
    except ValueError:
        return False
    return isinstance(document, dict) and "signal_name" in document


class Codec:
    """Encrypts and authenticates the envelopes of one network.

    ``keys``: the first key encrypts, every key decrypts (rotation without
    downtime); ``set_keys`` swaps them at run time. ``network``: the network
    the codec's tokens belong to; a token of another network is refused.
    ``max_age``: tokens made longer ago than this many seconds, or stamped
    further than this in the future (clock skew), are refused; None accepts
    any age (replays are then caught by the receiver's replay filter only).
    ``ttl`` is the 0.3.0 name of ``max_age``. ``clock``: seconds since the
    epoch (injectable for tests). ``max_message_bytes``: larger tokens are
    refused before anything else is done with them, sending or receiving.
    """

    def __init__(
        self,
        keys: Sequence[Secret | str | bytes],
        *,
        serializer: Serializer = PICKLE,
        network: Network | str = Network.MESH,
        max_age: float | None = DEFAULT_MAX_AGE_SEC,
        ttl: float | None | bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.set_keys(keys)
        self.serializer = serializer
        self.network = Network(network)
        self.max_age: float | None = max_age if ttl is False else ttl
        self.max_message_bytes = max_message_bytes
        self.clock = clock

    @property
    def ttl(self) -> float | None:
        """0.3.0 name of :attr:`max_age`."""
        return self.max_age

    @ttl.setter
    def ttl(self, value: float | None) -> None:
        self.max_age = value

    def __repr__(self) -> str:
        return (f"Codec(network={self.network.value!r}, serializer={self.serializer.name!r}, "
                f"max_age={self.max_age!r}, keys=******)")

    def set_keys(self, keys: Sequence[Secret | str | bytes]) -> None:
        fernets = _fernets(keys)
        # every key decrypts (rotation); the first one encrypts
        self._fernet, self._primary = MultiFernet(fernets), fernets[0]

    def encode(self, envelope: Envelope) -> bytes:
        """The token of ``envelope``; raises :class:`SerializationError` (also when too large)."""
        try:
            body = self.serializer.dumps(envelope.payload)
        except Exception as error:  # the serializer is user-replaceable
            raise SerializationError(
                f"{self.serializer.name} cannot serialize the payload of "
                f"{envelope.signal_name}: {type(error).__name__}: {error}"
            ) from None
        try:
            header = envelope.header(self.network)
        except (struct.error, UnicodeError):
            raise SerializationError(
                f"envelope fields out of range for {envelope.signal_name!r}") from None
        token = _encrypt(self._primary, header + body, int(self.clock()))
        if len(token) > self.max_message_bytes:
            raise SerializationError(
                f"{envelope.signal_name}: {len(token)} bytes on the wire, more than the "
                f"{self.max_message_bytes} receivers accept (max_message_bytes)")
        return token

    def decode(self, token: bytes, *, routing_key: str | None = None) -> Envelope:
        """Return the envelope, or raise :class:`DecodeError` with a drop reason.

        ``routing_key``: the key the token arrived under; a token made for
        another key is refused (``wrong_route``). None skips that check
        (direct replies). Reasons: ``too_large``, ``garbage``, ``bad_key``,
        ``v0.2`` (a miros-rabbitmq 0.2 message), ``old_envelope``,
        ``wrong_network``, ``wrong_route``, ``expired``, ``deserialize``.
        """
        if len(token) > self.max_message_bytes:  # before anything else
            raise DecodeError("too_large", f"{len(token)} bytes")
        try:
            plaintext = self._fernet.decrypt(token)  # no ttl: no 60 s future-skew limit
        except InvalidToken:
            raise DecodeError(_why_invalid(token)) from None
        except Exception:  # malformed input must never escape the receive loop
            raise DecodeError("garbage") from None
        sent_at = _timestamp(token)  # authentic: the token decrypted
        try:
            magic, network_id, epoch, seq, *lengths = _HEADER.unpack_from(plaintext)
        except struct.error:
            magic = b""
        if magic != MAGIC:
            if _looks_like_v02(plaintext):
                raise DecodeError("v0.2", "a miros-rabbitmq 0.2 message") from None
            if plaintext.startswith(OLD_MAGIC):
                raise DecodeError("old_envelope", "an envelope of a 0.3 development build")
            raise DecodeError("garbage", "bad envelope header")
        network = _NETWORK_OF_ID.get(network_id)
        if network is not self.network:
            raise DecodeError("wrong_network", f"a {network.value if network else '?'} token")
        start = _HEADER.size
        fields = []
        try:
            for length in lengths:
                fields.append(plaintext[start:start + length].decode())
                start += length
        except UnicodeDecodeError:
            raise DecodeError("garbage", "bad envelope header") from None
        if start > len(plaintext):
            raise DecodeError("garbage", "truncated envelope")
        signal_name, sender, origin, causation, sent_key = fields
        if routing_key is not None and routing_key != sent_key:
            raise DecodeError("wrong_route", "routing key differs from the one inside")
        if self.max_age is not None and abs(self.clock() - sent_at) > self.max_age:
            raise DecodeError("expired", f"made {self.clock() - sent_at:.0f} s ago")
        try:
            payload = self.serializer.loads(plaintext[start:])
        except Exception as error:
            raise DecodeError("deserialize", type(error).__name__) from None
        return Envelope(signal_name, payload, sender, seq, origin, causation, epoch, sent_key,
                        float(sent_at))


def _timestamp(token: bytes) -> int:
    """The Fernet timestamp (bytes 1..8 of the decoded token); call only on authentic tokens."""
    raw = base64.urlsafe_b64decode(token)
    return int.from_bytes(raw[1:9], "big")


def _why_invalid(token: bytes) -> str:
    """Tell garbage from a token under another key, without a second decryption."""
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return "garbage"
    if len(raw) < _FERNET_MIN_BYTES or raw[0] != _FERNET_VERSION:  # not a Fernet token at all
        return "garbage"
    return "bad_key"
