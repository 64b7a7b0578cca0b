"""Several tokens in one AMQP message: the batch framing.

Pure logic, no I/O. When a link has more than one message queued for the
same exchange and routing key, its I/O thread publishes them as one AMQP
message whose body is their tokens joined by a newline. A Fernet token is
URL-safe base64, so it never contains ``b"\\n"``; a body with no newline is
one token, exactly what a single publish carries.

Why: a broker and an AMQP client spend most of their per-message work on
the message (routing, persistence, frames, the publisher confirm, the ack),
not on its bytes. Packing the events that are waiting anyway into one
message divides that work by the batch size; an event sent when nothing is
waiting still leaves alone and at once, so latency is unchanged. Each token
stays a whole, separately authenticated envelope with its own sender, epoch
and sequence number: receivers check and deliver each one as before, in
order.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SEPARATOR", "BATCH_MAX_TOKENS", "BATCH_MAX_BYTES", "join_tokens", "split_tokens"]

SEPARATOR = b"\n"
#: at most this many tokens go into one AMQP message
BATCH_MAX_TOKENS = 64
#: and at most this many body bytes (a single larger token still goes, alone)
BATCH_MAX_BYTES = 64 * 1024


def join_tokens(tokens: Sequence[bytes]) -> bytes:
    """The body of one AMQP message carrying ``tokens`` in order (one token: itself)."""
    return SEPARATOR.join(tokens)


def split_tokens(body: bytes) -> list[bytes]:
    """The tokens of a message body, in order (one when there is no separator)."""
    return body.split(SEPARATOR)
