"""Small helpers shared by the discovery charts (private).

* :class:`Timers` -- named one-shot timers that call back (usually to post an
  event into a chart). Unlike miros's ``post_fifo(period=...)`` threads, a
  cancelled timer ends at once, so a stopped chart leaves no thread behind.
* :class:`ScoutBatch` -- scout many addresses in parallel with
  :class:`~miros_rabbitmq.discovery.rabbit_consumer_scout_chart.RabbitConsumerScoutChart`
  (a bounded number at a time) and collect their ``AMQP_CONSUMER_CHECK``
  answers, telling our own answers from those of other searchers of the
  process by a routing key of our own.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from miros_rabbitmq.discovery.rabbit_consumer_scout_chart import RabbitConsumerScoutChart
from miros_rabbitmq.errors import PeerAddressError
from miros_rabbitmq.mesh.challenge import ScoutCredentials
from miros_rabbitmq.payloads import ConnectionDiscoveryPayload
from miros_rabbitmq.transport import parse_peer
from miros_rabbitmq.wire.names import MESH_EXCHANGE, ProbeOutcome

__all__ = ["Timers", "ScoutBatch", "ScoutAnswer", "search_key", "TaggedDiscovery", "tagged"]

logger = logging.getLogger(__name__)


def search_key(kind: str) -> str:
    """A routing key unique to one searcher: ``miros.<kind>.<random>``.

    Scouts send it in their challenge and echo it in ``AMQP_CONSUMER_CHECK``;
    a chart keeps the answers that carry its own key and ignores the others
    (every ``AMQP_CONSUMER_CHECK`` of the process reaches every subscriber).
    """
    return f"miros.{kind}.{uuid.uuid4().hex[:10]}"


class TaggedDiscovery(ConnectionDiscoveryPayload):
    """A ConnectionDiscoveryPayload that also says which discovery made it (``tag``).

    It is still a ``ConnectionDiscoveryPayload`` (and equal to the plain
    tuple); a ProducerFactoryChart takes tagged payloads of its own discovery
    only, so two discoveries in one process never adopt each other's peers.
    Untagged payloads (published by user code) are taken by every factory.
    """

    tag: str | None
    unverified: bool = False

    def __repr__(self) -> str:  # reads like the payload it is
        text = ConnectionDiscoveryPayload.__repr__(self)
        return text.replace(type(self).__name__, "ConnectionDiscoveryPayload", 1)


def tagged(payload: ConnectionDiscoveryPayload, tag: str | None, *,
           unverified: bool = False) -> ConnectionDiscoveryPayload:
    """``payload`` marked with its discovery's ``tag``; ``unverified``: its peers
    are claims (a LAN cache entry), to be scouted before the factory adopts them."""
    if tag is None and not unverified:
        return payload
    result = TaggedDiscovery(*payload)
    result.tag = tag
    result.unverified = unverified
    return result


class Timers:
    """Named one-shot timers; re-arming a name replaces its timer."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._timers: dict[Hashable, threading.Timer] = {}
        self._closed = False

    def arm(self, key: Hashable, delay: float, callback: Callable[[], Any]) -> None:
        timer = threading.Timer(max(0.0, delay), self._fire, args=(key, callback))
        timer.daemon = True
        timer.name = f"{self.owner}-timer"
        with self._lock:
            if self._closed:
                return
            old = self._timers.pop(key, None)
            self._timers[key] = timer
            timer.start()  # under the lock: close() never meets a timer not yet started
        if old is not None:
            old.cancel()

    def _fire(self, key: Hashable, callback: Callable[[], Any]) -> None:
        with self._lock:
            if self._timers.get(key) is not threading.current_thread():
                return  # cancelled or replaced while it was firing
            del self._timers[key]
        try:
            callback()
        except Exception:
            logger.exception("%s: timer %r failed", self.owner, key)

    def cancel(self, key: Hashable) -> None:
        with self._lock:
            timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def armed(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._timers

    def close(self) -> None:
        """Cancel every timer and wait (briefly) for their threads to end."""
        with self._lock:
            self._closed = True
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            if timer is not threading.current_thread() and timer.ident is not None:
                timer.join(1.0)


@dataclass(frozen=True)
class ScoutAnswer:
    """What one scout found: ``result`` True when a node holding our key answered."""

    address: str
    result: bool
    reason: str
    elapsed: float
    outcome: ProbeOutcome = ProbeOutcome.ERROR


class ScoutBatch:
    """Scout addresses in parallel, at most ``parallel`` scouts at a time.

    Feed it every ``AMQP_CONSUMER_CHECK`` the owning chart receives
    (:meth:`take`); it keeps the ones of its own search. Thread-safety: use it
    from the owning chart's thread only (``stop`` may be called from any).
    """

    def __init__(self, credentials: ScoutCredentials, *, routing_key: str,
                 timeout: float, parallel: int = 64, exchange: str = MESH_EXCHANGE) -> None:
        self.credentials = credentials
        self.routing_key = routing_key
        self.exchange = exchange
        self.timeout = timeout
        self.parallel = max(1, parallel)
        self.answers: dict[str, ScoutAnswer] = {}
        self._waiting: list[str] = []
        # target -> (the entries it stands for, its scout); two spellings, one scout
        self._running: dict[str, tuple[list[str], RabbitConsumerScoutChart]] = {}
        self._lock = threading.Lock()

    def start(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            address = str(address)
            if address not in self.answers and address not in self._waiting \
                    and all(address not in a for a, _ in self._running.values()):
                self._waiting.append(address)
        self._launch()

    def _target(self, address: str) -> tuple[str, ScoutCredentials]:
        """What the scout searches, and with which credentials.

        An ``amqp://user:password@host:port/vhost`` entry is scouted as
        ``host:port`` with its own user, password and vhost (the user wrote
        that login for that broker), so that the password never becomes a
        scout's name (its thread name, its trace). A URL without a password
        is scouted with the scout account, on its vhost.
        """
        if "://" not in address:
            return address, self.credentials
        settings = self.credentials.settings
        parsed = parse_peer(address, settings)
        own = replace(settings, rabbit_user=parsed.user, rabbit_password=parsed.password,
                      rabbit_vhost=parsed.vhost)
        return parsed.hostport, ScoutCredentials(own, own_login=parsed.own_login)

    def _launch(self) -> None:
        while self._waiting and len(self._running) < self.parallel:
            address = self._waiting.pop(0)
            try:
                target, credentials = self._target(address)
                if target in self._running:  # another spelling of an address being scouted
                    self._running[target][0].append(address)
                    continue
                scout = RabbitConsumerScoutChart(
                    target, routing_key=self.routing_key, exchange_name=self.exchange,
                    timeout=self.timeout, credentials=credentials)
            except Exception as error:  # a bad address never takes the owner down
                self.answers[address] = ScoutAnswer(
                    address, False, str(error), 0.0,
                    ProbeOutcome.BAD_ADDRESS if isinstance(error, PeerAddressError)
                    else ProbeOutcome.ERROR)
                continue
            with self._lock:
                self._running[target] = ([address], scout)

    def take(self, payload: Any) -> ScoutAnswer | None:
        """Record ``payload`` if it answers one of our scouts; the answer, else None."""
        if getattr(payload, "routing_key", None) != self.routing_key:
            return None
        with self._lock:
            running = self._running.pop(str(getattr(payload, "ip_address", "")), None)
        if running is None:
            return None
        addresses, scout = running
        for address in addresses:
            answer = ScoutAnswer(address, bool(payload.result), scout.last_reason or (
                "answered" if payload.result else "no answer"), scout.last_elapsed,
                ProbeOutcome.ANSWERED if payload.result else scout.last_outcome)
            self.answers[address] = answer
        scout.stop()  # answered: its thread has ended already; this only tidies up
        self._launch()
        return answer

    @property
    def pending(self) -> int:
        return len(self._waiting) + len(self._running)

    @property
    def done(self) -> bool:
        return not self._waiting and not self._running

    def found(self) -> list[str]:
        return [a.address for a in self.answers.values() if a.result]

    def give_up(self) -> None:
        """Count every unanswered address as a miss (the owner's safety timer ran out)."""
        for address in list(self._waiting):
            self.answers[address] = ScoutAnswer(address, False, "not scouted in time", 0.0)
        self._waiting.clear()
        with self._lock:
            running, self._running = dict(self._running), {}
        for addresses, scout in running.values():
            for address in addresses:
                self.answers[address] = ScoutAnswer(address, False,
                                                    "the scout did not answer in time", self.timeout)
            scout.stop()

    def stop(self) -> None:
        """Stop every scout still searching (their connections are released)."""
        self._waiting.clear()
        with self._lock:
            running, self._running = dict(self._running), {}
        for _address, scout in running.values():
            scout.stop()
