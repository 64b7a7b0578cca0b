"""RabbitConsumerScoutChart: does this address host a node of our mesh?

A miros statechart (one per address; its name is the address) that asks
whatever listens at ``ip_address`` to answer a challenge only a holder of our
mesh key can answer (:mod:`miros_rabbitmq.mesh.challenge`), and publishes the
verdict as ``AMQP_CONSUMER_CHECK`` with an
:class:`~miros_rabbitmq.payloads.AMQPConsumerCheckPayload`::

    search
    +-- producer_thread_engaged          (a probe of the address is under way)
    |   +-- producer_post_and_wait       (challenge sent, waiting for the answer)
    +-- amqp_consumer_server_found       (answered: a compatible node is there)
    +-- no_amqp_consumer_server_found    (refused, nobody answered, or timeout)

``REFACTOR_SEARCH`` (a dict with ``ip_address``, ``routing_key``,
``exchange_name``), handled by ``search``, starts another search at any time.

The probes of every scout of the process share one I/O thread; a scout holds
its own thread only while it searches: once it has answered, its thread ends
and a later ``REFACTOR_SEARCH`` starts a new one. ``stop()`` cancels a search
and releases its connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import namedtuples_reused
from miros_rabbitmq.errors import ConfigurationError, PeerAddressError
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.payloads import AMQPConsumerCheckPayload
from miros_rabbitmq.transport import Probe, ProbeResult
from miros_rabbitmq.wire.names import DEFAULT_SCOUT_TIMEOUT, MESH_EXCHANGE, ProbeOutcome

__all__ = ["RabbitConsumerScoutChart", "SearchCriteria", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = DEFAULT_SCOUT_TIMEOUT  # seconds to wait for a node's answer
STOP_WAIT = 2.0  # seconds stop() waits for a cancelled probe to release its socket


class SearchCriteria(NamedTuple):
    ip_address: str
    routing_key: str
    exchange_name: str


class ConsumerTestComplete(NamedTuple):
    """Payload of the chart's internal ``consumer_test_complete`` event."""

    search: int
    result: bool
    reason: str
    elapsed: float
    outcome: ProbeOutcome = ProbeOutcome.ERROR


@spy_on
def search(scout: RabbitConsumerScoutChart, e: Event) -> Any:
    if e.signal == signals.REFACTOR_SEARCH:
        if not scout.refactor(e.payload):
            return return_status.HANDLED
        return scout.trans(producer_thread_engaged)
    scout.temp.fun = scout.top
    return return_status.SUPER


@spy_on
def producer_thread_engaged(scout: RabbitConsumerScoutChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        scout.searching = True
        scout.post_fifo(Event(signal=signals.try_to_connect_to_consumer))
        return return_status.HANDLED
    if e.signal == signals.try_to_connect_to_consumer:
        return scout.trans(producer_post_and_wait)
    if e.signal == signals.EXIT_SIGNAL:
        scout.release_probe()
        return return_status.HANDLED
    scout.temp.fun = search
    return return_status.SUPER


@spy_on
def producer_post_and_wait(scout: RabbitConsumerScoutChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        scout.start_probe()
        return return_status.HANDLED
    if e.signal == signals.consumer_test_complete:
        if e.payload.search != scout.search_number:
            return return_status.HANDLED  # the answer of a search we abandoned
        scout.last_reason = e.payload.reason
        scout.last_outcome = e.payload.outcome
        scout.last_elapsed = e.payload.elapsed
        if e.payload.result:
            return scout.trans(amqp_consumer_server_found)
        return scout.trans(no_amqp_consumer_server_found)
    scout.temp.fun = producer_thread_engaged
    return return_status.SUPER


@spy_on
def amqp_consumer_server_found(scout: RabbitConsumerScoutChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        scout.report(True)
        return return_status.HANDLED
    scout.temp.fun = search
    return return_status.SUPER


@spy_on
def no_amqp_consumer_server_found(scout: RabbitConsumerScoutChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        scout.report(False)
        return return_status.HANDLED
    scout.temp.fun = search
    return return_status.SUPER


class RabbitConsumerScoutChart(ActiveObject):
    """Find out whether ``ip_address`` hosts a node holding our mesh key.

    ``ip_address``: ``host``, ``host:port``, a hostname (or an amqp:// URL).
    ``routing_key``, ``exchange`` (or ``exchange_name=``): the search criteria,
    sent along in the challenge and echoed in the answer. ``live_trace`` /
    ``live_spy``: print the chart's trace / spy (the trace is followed by the
    answer's tuple). ``timeout``: seconds before a silent address counts as a
    miss. ``credentials``: a :class:`~miros_rabbitmq.mesh.challenge.ScoutCredentials`
    to share between scouts; by default one is read from ``.env`` / the
    environment. The scout starts itself.
    """

    name: str
    thread: threading.Thread | None

    def __init__(
        self,
        ip_address: str,
        routing_key: str,
        exchange: str | None = None,
        live_trace: bool | None = None,
        live_spy: bool | None = None,
        *,
        exchange_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: ScoutCredentials | None = None,
    ) -> None:
        if exchange is not None and exchange_name is not None and exchange != exchange_name:
            raise ConfigurationError(
                f"give the exchange once: exchange={exchange!r} or exchange_name={exchange_name!r}")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        with namedtuples_reused():
            super().__init__(name=str(ip_address))
        self.credentials = credentials if credentials is not None else ScoutCredentials()
        self.criteria = SearchCriteria(
            str(ip_address), routing_key, exchange or exchange_name or MESH_EXCHANGE)
        self.timeout = timeout
        self.live_trace = bool(live_trace)
        self.live_spy = bool(live_spy)
        self.searching = False
        self.search_number = 0
        self.answer: AMQPConsumerCheckPayload | None = None
        self.last_reason = ""
        self.last_outcome = ProbeOutcome.ERROR
        self.last_elapsed = 0.0
        self._probe: Probe | None = None
        self._to_print: AMQPConsumerCheckPayload | None = None
        self._life = threading.Lock()
        self._resting = False
        self._stopped = False
        self.start_at(producer_thread_engaged)

    # ------------------------------------------------------------------ chart actions
    def refactor(self, criteria: Any) -> bool:
        """Take new search criteria from a REFACTOR_SEARCH payload (a dict with
        ``ip_address``, ``routing_key``, ``exchange_name``; a missing key keeps
        its value). False, logged, for a payload that is not a dict."""
        if not isinstance(criteria, Mapping):
            logger.warning("%s: REFACTOR_SEARCH ignored: its payload must be a dict with "
                           "ip_address, routing_key, exchange_name", self.name)
            return False
        current = self.criteria
        self.criteria = SearchCriteria(
            str(criteria.get("ip_address", current.ip_address)),
            criteria.get("routing_key", current.routing_key),
            criteria.get("exchange_name", criteria.get("exchange", current.exchange_name)))
        self.name = self.criteria.ip_address  # a scout is named after the address it searches
        return True

    def start_probe(self) -> None:
        self.search_number += 1
        number = self.search_number

        def on_done(result: ProbeResult) -> None:  # on the prober's I/O thread
            self.post_fifo(Event(signal=signals.consumer_test_complete, payload=ConsumerTestComplete(
                number, result.ok, result.reason, result.elapsed, result.outcome)))

        try:
            self._probe = self.credentials.probe(
                self.criteria.ip_address, routing_key=self.criteria.routing_key,
                exchange_name=self.criteria.exchange_name, timeout=self.timeout, on_done=on_done)
        except PeerAddressError as error:
            self._probe = None
            on_done(ProbeResult(False, str(error), 0.0, ProbeOutcome.BAD_ADDRESS))

    def release_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()  # closes the connection; no-op for a probe that has answered

    def report(self, result: bool) -> None:
        self.searching = False
        self.answer = AMQPConsumerCheckPayload(self.criteria.ip_address, result,
                                               self.criteria.routing_key,
                                               self.criteria.exchange_name)
        self.publish(Event(signal=signals.AMQP_CONSUMER_CHECK, payload=self.answer))
        self._to_print = self.answer

    # ------------------------------------------------------------------ thread life
    def next_rtc(self) -> Any:
        result = super().next_rtc()  # prints this step's live trace line
        answer, self._to_print = self._to_print, None
        if answer is not None and self.live_trace:
            self.live_trace_callback(str(tuple(answer)))
        self._rest_if_idle()
        return result

    def _rest_if_idle(self) -> None:
        """On the chart thread: an answered scout with nothing to do ends its thread."""
        with self._life:
            if self.searching or self._stopped or len(self.queue):
                return
            self._resting = True
            self.activeobject_task_event.clear()  # run_event returns after this step

    def _wake(self) -> None:
        """A resting scout got an event: give it a thread again."""
        with self._life:
            if not self._resting or self._stopped:
                return
            self._resting = False
            previous = self.thread
        if previous is not None and previous is not threading.current_thread():
            previous.join()  # it is finishing the step in which it came to rest
        self.activeobject_task_event.set()
        thread = threading.Thread(
            target=self.run_event, name=self.name, daemon=True,
            args=(self.activeobject_task_event, self.fabric_task_event, self.queue))
        self.thread = thread
        thread.start()

    def post_fifo(self, e: Event, period: float | None = None, times: int | None = None,
                  deferred: bool | None = None) -> Any:
        result = super().post_fifo(e, period=period, times=times, deferred=deferred)
        if period is None:
            self._wake()
        return result

    def post_lifo(self, e: Event, period: float | None = None, times: int | None = None,
                  deferred: bool | None = None) -> Any:
        result = super().post_lifo(e, period=period, times=times, deferred=deferred)
        if period is None:
            self._wake()
        return result

    @property
    def resting(self) -> bool:
        """True once the scout has answered and let its thread go."""
        return self._resting

    def stop(self) -> None:
        """Cancel any search, release its connection and end the chart's thread."""
        with self._life:
            self._stopped = True
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
        super().stop()
        if probe is not None and threading.current_thread() is not self.thread:
            probe.closed.wait(STOP_WAIT)
