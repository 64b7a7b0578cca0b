"""ManNetChart: the peers listed by hand in the hosts file.

A miros statechart named ``man_net_chart``::

    manual_network
    +-- hosts_file_waiting      EVALUATE_HOSTS_FILE -> hosts_file_evaluating
    |                           (also: the file changed; or, while some hosts are
    |                            dead, a re-scout of those after a growing delay)
    +-- hosts_file_evaluating   entry: read the file, one scout per host (in parallel)
                                AMQP_CONSUMER_CHECK -> collect; all answered ->
                                publish CONNECTION_DISCOVERY (the live ones) -> hosts_file_waiting
                                EVALUATE_HOSTS_FILE -> deferred until the evaluation ends

The hosts file (``.miros_rabbitmq_hosts.json`` in the working folder by
default) lists IP addresses, hostnames, ``host:port`` and ``amqp://`` URLs::

    {"hosts": ["192.168.1.75", "robot2.local:5673", "www.example.org"]}

Every host is scouted (a broker that takes our credentials and a node there
that proves it holds our mesh key); the live ones are published as
``CONNECTION_DISCOVERY`` with
:class:`~miros_rabbitmq.payloads.ConnectionDiscoveryPayload` ``(hosts,
amqp_urls, "man_net_chart")``. A dead, unresolvable or malformed host is a
miss, logged once, never a crash; it is scouted again after 2 s, 4 s, ...
up to a minute, so a host that comes up is added. A missing file means no
hosts; a corrupt one is reported and the previous list is kept.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from miros import ActiveObject, Event, return_status, signals, spy_on

from miros_rabbitmq._miros import keep_first_deferred, signal_number, subscribe_now
from miros_rabbitmq.config import mask_url
from miros_rabbitmq.discovery._support import ScoutAnswer, ScoutBatch, Timers, search_key, tagged
from miros_rabbitmq.discovery.hosts_file import HOSTS_FILE, read_hosts
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.payloads import ConnectionDiscoveryPayload
from miros_rabbitmq.wire.names import DEFAULT_SCOUT_TIMEOUT

__all__ = ["ManNetChart", "HOSTS_FILE", "DISPATCHER", "read_hosts"]

logger = logging.getLogger(__name__)

DISPATCHER = "man_net_chart"
SAFETY_MARGIN_SEC = 2.0

for _name in ("EVALUATE_HOSTS_FILE", "AMQP_CONSUMER_CHECK", "CONNECTION_DISCOVERY",
              "hosts_file_watch", "reevaluate_dead_hosts", "evaluation_time_out"):
    signal_number(_name)
del _name


@spy_on
def manual_network(chart: ManNetChart, e: Event) -> Any:
    if e.signal in (signals.AMQP_CONSUMER_CHECK, signals.hosts_file_watch,
                    signals.reevaluate_dead_hosts, signals.evaluation_time_out):
        return return_status.HANDLED  # stale, or meant for another chart
    chart.temp.fun = chart.top
    return return_status.SUPER


@spy_on
def hosts_file_waiting(chart: ManNetChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.arm_timers()
        return return_status.HANDLED
    if e.signal == signals.EVALUATE_HOSTS_FILE:
        chart.only_dead = False
        return chart.trans(hosts_file_evaluating)
    if e.signal == signals.reevaluate_dead_hosts:
        chart.only_dead = True
        return chart.trans(hosts_file_evaluating)
    if e.signal == signals.hosts_file_watch:
        if chart.file_changed():
            chart.only_dead = False
            return chart.trans(hosts_file_evaluating)
        chart.arm_watch()
        return return_status.HANDLED
    if e.signal == signals.EXIT_SIGNAL:
        chart.timers.cancel("watch")
        chart.timers.cancel("dead")
        return return_status.HANDLED
    chart.temp.fun = manual_network
    return return_status.SUPER


@spy_on
def hosts_file_evaluating(chart: ManNetChart, e: Event) -> Any:
    if e.signal == signals.ENTRY_SIGNAL:
        chart.evaluate()
        if chart.batch is None or chart.batch.done:
            chart.post_fifo(Event(signal=signals.evaluation_time_out))
        return return_status.HANDLED
    if e.signal == signals.AMQP_CONSUMER_CHECK:
        if chart.batch is not None and chart.batch.take(e.payload) is not None \
                and chart.batch.done:
            chart.publish_live()
            return chart.trans(hosts_file_waiting)
        return return_status.HANDLED
    if e.signal == signals.evaluation_time_out:
        chart.publish_live()
        return chart.trans(hosts_file_waiting)
    if e.signal == signals.EVALUATE_HOSTS_FILE:
        chart.defer(e)
        return return_status.HANDLED
    if e.signal == signals.EXIT_SIGNAL:
        chart.end_evaluation()
        return return_status.HANDLED
    chart.temp.fun = manual_network
    return return_status.SUPER


class ManNetChart(ActiveObject):
    """Scout the hosts of the hosts file and publish the live ones.

    ``ManNetChart(hosts_file=None, live_trace=None, live_spy=None, *,
    credentials=None, scout_timeout=0.5, reevaluate_min_sec=2, reevaluate_max_sec=60,
    watch_sec=5)``. It starts itself and evaluates the file at once; post or
    publish ``EVALUATE_HOSTS_FILE`` to evaluate it again. ``watch_sec``: how
    often the file is checked for changes (0: never). Results:
    :attr:`answers` (host -> :class:`ScoutAnswer` of its last scouting),
    :attr:`hosts`, :attr:`evaluations`.
    """

    def __init__(
        self,
        hosts_file: str | os.PathLike[str] | None = None,
        live_trace: bool | None = None,
        live_spy: bool | None = None,
        *,
        credentials: ScoutCredentials | None = None,
        scout_timeout: float = DEFAULT_SCOUT_TIMEOUT,
        reevaluate_min_sec: float = 2.0,
        reevaluate_max_sec: float = 60.0,
        watch_sec: float = 5.0,
        parallel: int = 64,
        tag: str | None = None,
    ) -> None:
        if not scout_timeout > 0:
            raise ConfigurationError(f"scout_timeout must be positive, got {scout_timeout!r}")
        super().__init__(name="man_net_chart")
        self.hosts_file = os.path.abspath(os.fspath(hosts_file or HOSTS_FILE))
        self.credentials = credentials if credentials is not None else ScoutCredentials()
        self.scout_timeout = scout_timeout
        self.reevaluate_min_sec = reevaluate_min_sec
        self.reevaluate_max_sec = reevaluate_max_sec
        self.watch_sec = watch_sec
        self.parallel = parallel
        self.tag = tag
        self.live_trace = bool(live_trace)
        self.live_spy = bool(live_spy)
        self.routing_key = search_key("hosts")
        self.timers = Timers(self.name)
        self.batch: ScoutBatch | None = None
        self.hosts: list[str] = []
        self.answers: dict[str, ScoutAnswer] = {}
        self.evaluations = 0
        self.only_dead = False
        self._dead_rounds = 0
        self._signature: tuple[Any, ...] | None = None
        self._last_problem = ""
        self.post_fifo(Event(signal=signals.EVALUATE_HOSTS_FILE))
        self.start_at(hosts_file_waiting)
        subscribe_now(self, *("EVALUATE_HOSTS_FILE", "AMQP_CONSUMER_CHECK"))

    # ------------------------------------------------------------------ actions
    def _file_signature(self) -> tuple[Any, ...] | None:
        try:
            st = os.stat(self.hosts_file)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def file_changed(self) -> bool:
        return self._file_signature() != self._signature

    def evaluate(self) -> None:
        self.evaluations += 1
        self._signature = self._file_signature()
        try:
            hosts = read_hosts(self.hosts_file)
            self._last_problem = ""
        except ConfigurationError as error:
            if str(error) != self._last_problem:
                logger.warning("man_net_chart: %s; keeping the %d hosts read before", error,
                               len(self.hosts))
            self._last_problem = str(error)
            hosts = self.hosts
        if hosts != self.hosts:
            self._dead_rounds = 0
        self.hosts = hosts
        self.answers = {h: a for h, a in self.answers.items() if h in hosts}
        todo = [h for h in hosts if not (self.only_dead and h in self.answers
                                         and self.answers[h].result)]
        self.batch = ScoutBatch(self.credentials, routing_key=self.routing_key,
                                timeout=self.scout_timeout, parallel=self.parallel)
        self.batch.start(todo)
        if not self.batch.done:
            waves = -(-len(todo) // max(1, self.parallel))
            self.timers.arm("evaluation", waves * self.scout_timeout + SAFETY_MARGIN_SEC,
                            lambda: self.post_fifo(Event(signal=signals.evaluation_time_out)))

    def publish_live(self) -> None:
        batch = self.batch
        if batch is None:
            return
        if not batch.done:
            batch.give_up()
        for host, answer in batch.answers.items():
            previous = self.answers.get(host)
            if not answer.result and (previous is None or previous.result):
                logger.info("man_net_chart: %s is not reachable as a node of our mesh (%s); "
                            "scouting it again later", mask_url(host), answer.reason)
            self.answers[host] = answer
        live = [h for h in self.hosts if h in self.answers and self.answers[h].result]
        fresh = [h for h in live if h in batch.answers]
        if fresh:
            urls = [h for h in fresh if "://" in h]
            hosts = [h for h in fresh if "://" not in h]
            self.publish(Event(signal=signals.CONNECTION_DISCOVERY,
                               payload=tagged(ConnectionDiscoveryPayload(hosts, urls, DISPATCHER),
                                              self.tag)))

    def end_evaluation(self) -> None:
        self.timers.cancel("evaluation")
        if self.batch is not None:
            self.batch.stop()
            self.batch = None
        keep_first_deferred(self)  # one more evaluation serves every deferred request

    @property
    def dead(self) -> list[str]:
        return [h for h in self.hosts if h in self.answers and not self.answers[h].result]

    def arm_timers(self) -> None:
        self.arm_watch()
        if self.dead:
            delay = min(self.reevaluate_max_sec, self.reevaluate_min_sec * 2 ** self._dead_rounds)
            self._dead_rounds += 1
            self.timers.arm("dead", delay,
                            lambda: self.post_fifo(Event(signal=signals.reevaluate_dead_hosts)))
        else:
            self._dead_rounds = 0

    def arm_watch(self) -> None:
        if self.watch_sec > 0:
            self.timers.arm("watch", self.watch_sec,
                            lambda: self.post_fifo(Event(signal=signals.hosts_file_watch)))

    def stop(self) -> None:
        self.timers.close()
        super().stop()
        if self.batch is not None:
            self.batch.stop()
            self.batch = None
