"""miros-rabbitmq: networked miros statecharts over RabbitMQ."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from .codec import JSON, PICKLE, Serializer
from .config import Settings, load_settings
from .errors import (
    BrokerAuthenticationError,
    BrokerUnreachable,
    ConfigurationError,
    DecodeError,
    EnvContractBroken,
    Error,
    PeerAddressError,
    SerializationError,
)
from .nets import MirosNets
from .network import NetworkedActiveObject, NetworkedFactory
from .payloads import (
    AMQPConsumerCheckPayload,
    CacheReadPayload,
    CacheWritePayload,
    ConnectionDiscoveryPayload,
    ProducerQueue,
    RecceCompletePayload,
)

try:
    __version__ = version("miros-rabbitmq")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "NetworkedActiveObject",
    "NetworkedFactory",
    "MirosNets",
    "Settings",
    "load_settings",
    "Serializer",
    "PICKLE",
    "JSON",
    "AMQPConsumerCheckPayload",
    "CacheReadPayload",
    "CacheWritePayload",
    "ConnectionDiscoveryPayload",
    "ProducerQueue",
    "RecceCompletePayload",
    "Error",
    "EnvContractBroken",
    "ConfigurationError",
    "PeerAddressError",
    "BrokerUnreachable",
    "BrokerAuthenticationError",
    "DecodeError",
    "SerializationError",
]
