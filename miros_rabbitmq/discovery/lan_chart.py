"""LanChart: the LAN peers, from the LAN cache when it is fresh, else from a recce.

A miros statechart named ``lan_chart``::

    lan_discovery
    +-- read_lan_cache       entry: publish CACHE_FILE_READ (our cache file)
    |                        CACHE, fresh   -> publish CONNECTION_DISCOVERY -> lan_cache_fresh
    |                        CACHE, expired -> lan_recce
    +-- lan_recce            entry: publish RECCE_LAN
    |                        LAN_RECCE_COMPLETE -> publish CACHE_FILE_WRITE and
    |                                              CONNECTION_DISCOVERY -> lan_cache_fresh
    +-- lan_cache_fresh      entry: wake up when the cache expires -> read_lan_cache

The cache (``.miros_rabbitmq_lan_cache.json`` in the working folder by
default) is read and written through a
:class:`~miros_rabbitmq.cache.cache_file_chart.CacheFileChart`, so many processes
can share it::

    {"addresses": ["10.0.0.7"], "amqp_urls": ["amqp://10.0.0.7:5672/%2F"],
     "time_out_in_minutes": 30}

The URLs carry no credentials (every node uses the ``.env`` ones). A cache
is fresh when it is younger than ``time_out_in_minutes`` (the file's and
this chart's, whichever is shorter); a fresh cache means no scan at all. An
expired one (or a timeout of 0) makes the chart publish ``RECCE_LAN`` for
the :class:`~miros_rabbitmq.discovery.lan_recce_chart.LanRecceChart`, wait for
``LAN_RECCE_COMPLETE``, write the cache back and publish the addresses. A
scan that found nobody is cached for at most one minute, so a node that
started first looks again soon (others will find it and message it anyway).

Published: ``CONNECTION_DISCOVERY`` with
:class:`~miros_rabbitmq.payloads.ConnectionDiscoveryPayload` ``(hosts,
amqp_urls, "lan_chart")``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import signal_number, subscribe_now
from miros_rabbitmq.discovery._support import Timers, tagged
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.payloads import CacheWritePayload, ConnectionDiscoveryPayload
from miros_rabbitmq.wire.names import DEFAULT_LAN_CACHE_MINUTES, LAN_CACHE_FILE

__all__ = ["LanChart", "LAN_CACHE_FILE", "DEFAULT_TIME_OUT_IN_MINUTES", "DISPATCHER",
           "EMPTY_SCAN_TIME_OUT_IN_MINUTES"]

logger = logging.getLogger(__name__)

DEFAULT_TIME_OUT_IN_MINUTES = DEFAULT_LAN_CACHE_MINUTES
EMPTY_SCAN_TIME_OUT_IN_MINUTES = 1
DISPATCHER = "lan_chart"
CACHE_ANSWER_TIMEOUT_SEC = 10.0  # no CACHE answer: scan anyway
RECCE_TIMEOUT_SEC = 60.0  # no LAN_RECCE_COMPLETE: try again later
RETRY_AFTER_FAILED_RECCE_SEC = 60.0

for _name in ("CACHE_FILE_READ", "CACHE_FILE_WRITE", "CACHE", "RECCE_LAN",
              "LAN_RECCE_COMPLETE", "CONNECTION_DISCOVERY", "lan_cache_expired",
              "lan_cache_silent", "lan_recce_silent"):
    signal_number(_name)
del _name


@spy_on
def lan_discovery(chart: LanChart, e: Event) -> Any:
    if e.signal in (signals.CACHE, signals.LAN_RECCE_COMPLETE):
        return return_status.HANDLED  # not waiting for one
    chart.temp.fun = chart.top
    return return_status.SUPER


@spy_on
def read_lan_cache(chart: LanChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.request_cache()
        return return_status.HANDLED
    if e.signal == signals.CACHE and chart.is_my_cache(e.payload):
        if chart.take_cache(e.payload):
            return chart.trans(lan_cache_fresh)
        return chart.trans(lan_recce)
    if e.signal == signals.lan_cache_silent:
        logger.warning("lan_chart: no answer from the cache file chart; scanning the LAN")
        return chart.trans(lan_recce)
    if e.signal == signals.EXIT_SIGNAL:
        chart.timers.cancel("cache")
        return return_status.HANDLED
    chart.temp.fun = lan_discovery
    return return_status.SUPER


@spy_on
def lan_recce(chart: LanChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.request_recce()
        return return_status.HANDLED
    if e.signal == signals.LAN_RECCE_COMPLETE and chart.is_my_recce(e.payload):
        chart.take_recce(e.payload)
        return chart.trans(lan_cache_fresh)
    if e.signal == signals.lan_recce_silent:
        logger.warning("lan_chart: the LAN recce did not answer within %.0f s; trying again "
                       "in %.0f s", RECCE_TIMEOUT_SEC, RETRY_AFTER_FAILED_RECCE_SEC)
        chart.fresh_for = RETRY_AFTER_FAILED_RECCE_SEC
        return chart.trans(lan_cache_fresh)
    if e.signal == signals.EXIT_SIGNAL:
        chart.timers.cancel("recce")
        return return_status.HANDLED
    chart.temp.fun = lan_discovery
    return return_status.SUPER


@spy_on
def lan_cache_fresh(chart: LanChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        if chart.fresh_for > 0:  # a timeout of 0: scan at start only
            chart.timers.arm("fresh", max(1.0, chart.fresh_for),
                             lambda: chart.post_fifo(Event(signal=signals.lan_cache_expired)))
        return return_status.HANDLED
    if e.signal == signals.lan_cache_expired:
        return chart.trans(read_lan_cache)
    if e.signal == signals.EXIT_SIGNAL:
        chart.timers.cancel("fresh")
        return return_status.HANDLED
    chart.temp.fun = lan_discovery
    return return_status.SUPER


class LanChart(ActiveObject):
    """Publish the LAN's nodes from the cache, scanning only when it expired.

    ``LanChart(time_out_in_minutes=30, live_trace=None, live_spy=None, *,
    cache_file=None, port=5672, recce=None)``. The chart needs a
    :class:`~miros_rabbitmq.cache.cache_file_chart.CacheFileChart` for
    ``cache_file`` and a :class:`~miros_rabbitmq.discovery.lan_recce_chart.LanRecceChart`
    running in the process (``discovery.Discovery`` builds all three); with
    ``recce`` given it takes only that recce's results. It starts itself.
    Counters: :attr:`cache_hits`, :attr:`scans`; :attr:`last_addresses`.
    """

    def __init__(
        self,
        time_out_in_minutes: float = DEFAULT_TIME_OUT_IN_MINUTES,
        live_trace: bool | None = None,
        live_spy: bool | None = None,
        *,
        cache_file: str | os.PathLike[str] | None = None,
        port: int = 5672,
        recce: Any = None,
        tag: str | None = None,
        tls: bool = False,
    ) -> None:
        if isinstance(time_out_in_minutes, bool) or not isinstance(time_out_in_minutes, (int, float)) \
                or time_out_in_minutes < 0:
            raise ConfigurationError(
                f"time_out_in_minutes must be a number >= 0, got {time_out_in_minutes!r}")
        super().__init__(name="lan_chart")
        self.time_out_in_minutes = time_out_in_minutes
        self.cache_path = os.path.abspath(os.fspath(cache_file or LAN_CACHE_FILE))
        self.cache_name = os.path.basename(self.cache_path)
        self.port = port
        self.tls = tls  # the cache's URLs say amqps:// then (never a silent downgrade)
        self.recce = recce
        self.tag = tag
        self.live_trace = bool(live_trace)
        self.live_spy = bool(live_spy)
        self.timers = Timers(self.name)
        self.fresh_for = 0.0
        self.cache_hits = 0
        self.scans = 0
        self.last_addresses: list[str] = []
        # Subscribed before start_at: its first state asks the cache at once,
        # and the CacheFileChart hands its answer to whoever is subscribed
        # by then (an answer to a chart not yet subscribed is lost, and the
        # chart would scan after CACHE_ANSWER_TIMEOUT_SEC).
        subscribe_now(self, *("CACHE", "LAN_RECCE_COMPLETE"))
        self.start_at(read_lan_cache)

    # ------------------------------------------------------------------ actions
    def request_cache(self) -> None:
        self.timers.arm("cache", CACHE_ANSWER_TIMEOUT_SEC,
                        lambda: self.post_fifo(Event(signal=signals.lan_cache_silent)))
        self.publish(Event(signal=signals.CACHE_FILE_READ, payload=self.cache_path))

    def is_my_cache(self, payload: Any) -> bool:
        return getattr(payload, "file_name", None) == self.cache_name

    def take_cache(self, payload: Any) -> bool:
        """True (and the cached peers published) when the cache is fresh."""
        document = payload.dict if isinstance(payload.dict, Mapping) else {}
        addresses = document.get("addresses")
        urls = document.get("amqp_urls", [])
        timeout = document.get("time_out_in_minutes")
        if not isinstance(addresses, list) or not isinstance(urls, list) \
                or isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            return False
        age = max(0.0, time.time() - float(payload.last_modified))
        limit = min(float(timeout), float(self.time_out_in_minutes)) * 60.0
        if payload.expired or limit <= 0 or age >= limit:
            return False
        hosts = [str(a) for a in addresses if isinstance(a, str)]
        amqp_urls = [str(u) for u in urls if isinstance(u, str)]
        self.cache_hits += 1
        self.fresh_for = limit - age
        self.last_addresses = hosts
        logger.info("lan_chart: fresh LAN cache (%d peers, %.0f s old): no scan", len(hosts), age)
        self._announce(hosts, amqp_urls, unverified=True)  # a file anyone may have written
        return True

    def request_recce(self) -> None:
        self.scans += 1
        self.timers.arm("recce", RECCE_TIMEOUT_SEC,
                        lambda: self.post_fifo(Event(signal=signals.lan_recce_silent)))
        self.publish(Event(signal=signals.RECCE_LAN))

    def is_my_recce(self, payload: Any) -> bool:
        if self.recce is None:
            return True
        return payload is getattr(self.recce, "last_result", None)

    def take_recce(self, payload: Any) -> None:
        hosts = [str(a) for a in payload.other_addresses]
        urls = [self.url(a) for a in hosts]
        timeout = self.time_out_in_minutes if hosts else min(
            self.time_out_in_minutes, EMPTY_SCAN_TIME_OUT_IN_MINUTES)
        document = {"addresses": hosts, "amqp_urls": urls, "time_out_in_minutes": timeout}
        self.publish(Event(signal=signals.CACHE_FILE_WRITE,
                           payload=CacheWritePayload(document, self.cache_path)))
        self.fresh_for = float(timeout) * 60.0
        self.last_addresses = hosts
        self._announce(hosts, urls)

    def url(self, host: str) -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"{'amqps' if self.tls else 'amqp'}://{shown}:{self.port}/%2F"

    def _announce(self, hosts: list[str], urls: list[str], *, unverified: bool = False) -> None:
        if hosts or urls:
            self.publish(Event(signal=signals.CONNECTION_DISCOVERY,
                               payload=tagged(ConnectionDiscoveryPayload(hosts, urls, DISPATCHER),
                                              self.tag, unverified=unverified)))

    def stop(self) -> None:
        self.timers.close()
        super().stop()
