"""miros-rabbitmq: networked miros statecharts over RabbitMQ.

Names are imported on first use (PEP 562), so a process that only needs, say,
the cache chart does not pay for loading the AMQP client and cryptography.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from miros_rabbitmq.errors import (
    BrokerAuthenticationError,
    BrokerUnreachable,
    ConfigurationError,
    DecodeError,
    EnvContractBroken,
    Error,
    PeerAddressError,
    SerializationError,
)
from miros_rabbitmq.payloads import (
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

# public name -> module that defines it
_LAZY = {
    "NetworkedActiveObject": "mesh.networked",
    "NetworkedFactory": "mesh.networked",
    "MirosNets": "mesh.nets",
    "Settings": "config",
    "load_settings": "config",
    "Serializer": "wire.codec",
    "PICKLE": "wire.codec",
    "JSON": "wire.codec",
    "CacheFileChart": "cache.cache_file_chart",
    "RabbitConsumerScoutChart": "discovery.rabbit_consumer_scout_chart",
    "LanRecceChart": "discovery.lan_recce_chart",
    "LanChart": "discovery.lan_chart",
    "ManNetChart": "discovery.man_net_chart",
    "ProducerFactoryChart": "discovery.producer_factory_chart",
}

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
    "CacheFileChart",
    "RabbitConsumerScoutChart",
    "LanRecceChart",
    "LanChart",
    "ManNetChart",
    "ProducerFactoryChart",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager view of the same names
    from miros_rabbitmq.cache.cache_file_chart import CacheFileChart
    from miros_rabbitmq.config import Settings, load_settings
    from miros_rabbitmq.discovery.lan_chart import LanChart
    from miros_rabbitmq.discovery.lan_recce_chart import LanRecceChart
    from miros_rabbitmq.discovery.man_net_chart import ManNetChart
    from miros_rabbitmq.discovery.producer_factory_chart import ProducerFactoryChart
    from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart
    from miros_rabbitmq.mesh.nets import MirosNets
    from miros_rabbitmq.mesh.networked import NetworkedActiveObject, NetworkedFactory
    from miros_rabbitmq.wire.codec import JSON, PICKLE, Serializer
