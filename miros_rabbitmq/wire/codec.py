"""Envelopes on the wire: serialize, then encrypt; authenticate, then deserialize.

Pure logic, no I/O: a :class:`Codec` turns an :class:`Envelope` into a Fernet
token and back. The plaintext inside the token is::

    b"M2" | u64 seq | u16 len(signal) | u16 len(sender) | u16 len(origin)
         | u16 len(causation)
         | signal name | sender id | origin | causation | body (the network's serializer)

The header carries what the receiver needs before it touches the body: the
signal name, the sender's identity and sequence number (own-message filter,
duplicate filter, per-sender order) and the sender's advertised broker
(aliens), and the causation id: the id (``sender:seq``) of the event whose
handling transmitted this one, empty when none (``miros-rabbitmq view`` draws
causal chains from it). The body is deserialized only after the token authenticated under
one of the network's keys, so bytes from anyone without a key never reach
``pickle``.
"""

from __future__ import annotations

import base64
import binascii
import copyreg
import io
import json
import pickle
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from miros import Event, signals

from miros_rabbitmq.config import Secret
from miros_rabbitmq.errors import ConfigurationError, DecodeError, SerializationError

__all__ = [
    "Envelope",
    "Codec",
    "Serializer",
    "PICKLE",
    "JSON",
    "DEFAULT_MAX_MESSAGE_BYTES",
]

MAGIC = b"M2"
_HEADER = struct.Struct("!2sQHHHH")  # magic, seq, four string lengths
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Serializer:
    """A named pair of functions turning a payload into bytes and back."""

    name: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


_signal_lock = threading.Lock()
_signal_numbers: dict[str, int] = {}  # signal numbers never change once given


def signal_number(name: str) -> int:
    """The local number of a signal name, creating it if new (thread-safe).

    Signal numbers differ between processes; only names cross the wire.
    """
    number = _signal_numbers.get(name)
    if number is None:
        with _signal_lock:
            signals.append(name)  # not getattr: a name like "keys" is a dict method
            number = _signal_numbers[name] = int(signals[name])
    return number


def make_event(signal_name: str, payload: Any) -> Event:
    """``Event(signal=signal_name, payload=payload)``, without its cost.

    miros's constructor scans the whole signal table; on the receive path
    that scan is a measurable part of the latency. The attributes set here
    are the three that constructor sets.
    """
    event = Event.__new__(Event)
    event.payload = payload
    event.signal = signal_number(signal_name)
    event.signal_name = signal_name
    return event


def rebuild_event(signal_name: str, payload: Any) -> Event:
    """Unpickle helper: a miros Event travels as its signal name and payload."""
    return make_event(signal_name, payload)


# pickles name this function by module path: keep the 0.3.0 path (miros_rabbitmq/codec.py)
rebuild_event.__module__ = "miros_rabbitmq.codec"


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
    """What one transmitted event, trace line or spy line carries."""

    signal_name: str
    payload: Any
    sender: str
    seq: int
    origin: str = ""
    causation: str = ""  # id of the event whose handling sent this one ("" = none)

    @property
    def event_id(self) -> str:
        """This message's id as causation ids name it: ``sender:seq``."""
        return f"{self.sender}:{self.seq}"

    def header(self) -> bytes:
        """The plaintext before the body: fixed fields, then the four strings."""
        signal, sender, origin, causation = (self.signal_name.encode(), self.sender.encode(),
                                             self.origin.encode(), self.causation.encode())
        return _HEADER.pack(MAGIC, self.seq, len(signal), len(sender), len(origin),
                            len(causation)) + (signal + sender + origin + causation)


def _fernet(keys: Sequence[Secret | str | bytes]) -> MultiFernet:
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
    return MultiFernet(fernets)


class Codec:
    """Encrypts and authenticates the envelopes of one network.

    ``keys``: the first key encrypts, every key decrypts (rotation without
    downtime); ``set_keys`` swaps them at run time. ``ttl``: tokens older
    than this many seconds are refused (replay window); None accepts any age.
    """

    def __init__(
        self,
        keys: Sequence[Secret | str | bytes],
        *,
        serializer: Serializer = PICKLE,
        ttl: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._fernet = _fernet(keys)
        self.serializer = serializer
        self.ttl = ttl
        self.max_message_bytes = max_message_bytes

    def __repr__(self) -> str:
        return f"Codec(serializer={self.serializer.name!r}, ttl={self.ttl!r}, keys=******)"

    def set_keys(self, keys: Sequence[Secret | str | bytes]) -> None:
        self._fernet = _fernet(keys)

    def encode(self, envelope: Envelope) -> bytes:
        try:
            body = self.serializer.dumps(envelope.payload)
        except Exception as error:  # the serializer is user-replaceable
            raise SerializationError(
                f"{self.serializer.name} cannot serialize the payload of "
                f"{envelope.signal_name}: {type(error).__name__}: {error}"
            ) from None
        try:
            header = envelope.header()
        except (struct.error, UnicodeError):
            raise SerializationError(
                f"envelope fields out of range for {envelope.signal_name!r}") from None
        plaintext = header + body
        return self._fernet.encrypt(plaintext)

    def decode(self, token: bytes) -> Envelope:
        """Return the envelope, or raise :class:`DecodeError` with a drop reason."""
        if len(token) > self.max_message_bytes:
            raise DecodeError("too_large", f"{len(token)} bytes")
        try:
            if self.ttl is None:
                plaintext = self._fernet.decrypt(token)
            else:
                plaintext = self._fernet.decrypt(token, ttl=self.ttl)
        except InvalidToken:
            raise DecodeError(self._why_invalid(token)) from None
        except Exception:  # malformed input must never escape the receive loop
            raise DecodeError("garbage") from None
        try:
            magic, seq, signal_len, sender_len, origin_len, cause_len = (
                _HEADER.unpack_from(plaintext))
            if magic != MAGIC:
                raise ValueError("no envelope inside the token")
            start = _HEADER.size
            fields = []
            for length in (signal_len, sender_len, origin_len, cause_len):
                fields.append(plaintext[start:start + length].decode())
                start += length
            if start > len(plaintext):
                raise ValueError("truncated envelope")
        except (struct.error, ValueError):  # UnicodeDecodeError is a ValueError
            raise DecodeError("garbage", "bad envelope header") from None
        signal_name, sender, origin, causation = fields
        try:
            payload = self.serializer.loads(plaintext[start:])
        except Exception as error:
            raise DecodeError("deserialize", type(error).__name__) from None
        return Envelope(signal_name, payload, sender, seq, origin, causation)

    def _why_invalid(self, token: bytes) -> str:
        """Tell garbage, a token under another key, and an expired authentic token apart."""
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return "garbage"
        if len(raw) < 57 or raw[0] != 0x80:  # not a Fernet token at all
            return "garbage"
        if self.ttl is not None:
            try:
                self._fernet.decrypt(token)
            except Exception:
                return "bad_key"
            return "expired"
        return "bad_key"
