"""The payload named tuples that charts of this package publish and consume.

They are named tuples, so code written for the seed's plain tuples
(``ip, result, routing_key, exchange = payload``) keeps working.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "AMQPConsumerCheckPayload",
    "CacheReadPayload",
    "CacheWritePayload",
    "ChartPeerPayload",
    "ConnectionDiscoveryPayload",
    "RecceCompletePayload",
    "ProducerQueue",
]


class AMQPConsumerCheckPayload(NamedTuple):
    ip_address: str
    result: bool
    routing_key: str
    exchange_name: str


class CacheReadPayload(NamedTuple):
    dict: dict[str, Any]
    last_modified: float
    created_at: float
    expired: bool
    file_name: str


class CacheWritePayload(NamedTuple):
    json: dict[str, Any]
    file_name: str


class ChartPeerPayload(NamedTuple):
    """Cluster mode's ``PEER_JOINED`` / ``PEER_LEFT``: the chart that joined or left.

    ``name``: its chart name; ``identity``: its sender identity (name plus a
    random suffix, unique per incarnation); ``host``, ``pid``: where it runs;
    ``reason``: ``"start"`` (it just started) or ``"alive"`` (it was running
    already) for ``PEER_JOINED``, ``"stop"`` (it stopped) or ``"silent"`` (no
    presence line for a few intervals) for ``PEER_LEFT``.
    """

    name: str
    identity: str
    host: str
    pid: int
    reason: str


class ConnectionDiscoveryPayload(NamedTuple):
    hosts: list[str]
    amqp_urls: list[str]
    dispatcher: str


class RecceCompletePayload(NamedTuple):
    other_addresses: list[str]
    my_address: str


class ProducerQueue(NamedTuple):
    mesh_producers: list[Any]
    snoop_trace_producers: list[Any]
    snoop_spy_producers: list[Any]
    ip_addresses: list[str]
