"""The exceptions of miros_rabbitmq: one root, one line of why per subclass."""

from __future__ import annotations

__all__ = [
    "Error",
    "EnvContractBroken",
    "ConfigurationError",
    "PeerAddressError",
    "BrokerUnreachable",
    "BrokerAuthenticationError",
    "DecodeError",
    "SerializationError",
]


class Error(Exception):
    """Root of every exception raised by miros_rabbitmq."""


class EnvContractBroken(Error):
    """A required setting is missing from the environment and the .env file."""

    def __init__(self, variable: str, hint: str = "") -> None:
        self.variable = variable
        message = f"{variable} is not set: put {variable}=... in your .env file or environment"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class ConfigurationError(Error):
    """A setting is present but malformed (bad key format, bad port, ...)."""


class PeerAddressError(Error):
    """A peer entry (host, host:port or amqp:// URL) cannot be parsed."""


class BrokerUnreachable(Error):
    """Never raised (kept importable: it is public, and ``except BrokerUnreachable``
    in user code must keep working).

    An unreachable broker is not an error in this library: links retry in the
    background and buffer meanwhile (``nets.stats()["peers"][url]["connected"]``,
    ``last_error``), and ``start_at`` logs and carries on.
    """


class BrokerAuthenticationError(Error):
    """The broker refused the credentials."""


class DecodeError(Error):
    """A received message failed authentication or could not be deserialized.

    ``reason`` is one of the drop reasons counted by the networks
    (``"garbage"``, ``"bad_key"``, ``"expired"``, ``"too_large"``, ``"deserialize"``).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SerializationError(Error):
    """An outgoing payload cannot be serialized by the network's serializer."""
