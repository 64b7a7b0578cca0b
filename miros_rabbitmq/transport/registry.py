"""LINKS: the process-wide, refcounted broker links (one per broker, shared by all charts).

Also the exit flush: a program that ends without ``stop()`` still gets what
it transmitted confirmed (bounded wait), through an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from miros_rabbitmq.transport.address import BrokerAddress
from miros_rabbitmq.transport.link import BrokerLink

__all__ = ["LinkRegistry", "LINKS", "EXIT_FLUSH_TIMEOUT", "flush_all"]

logger = logging.getLogger(__name__)

#: seconds the exit hook waits, in all, for unconfirmed messages
EXIT_FLUSH_TIMEOUT = 5.0


class LinkRegistry:
    """Process-wide, refcounted links: one per broker, shared by all charts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[tuple[Any, ...], tuple[BrokerLink, int]] = {}

    def acquire(self, address: BrokerAddress, *, exchanges: Iterable[tuple[str, str]] = (),
                alternates: Sequence[BrokerAddress] = (), **options: Any) -> BrokerLink:
        """The link to ``address``, made with ``options`` (see BrokerLink) if it is the first.

        With ``alternates``: the link to the cluster of those nodes, one per
        cluster per process whichever node a chart lists first.
        """
        key: tuple[Any, ...] = address.identity()
        if alternates:
            key = ("cluster", *sorted({a.identity() for a in (address, *alternates)}))
        with self._lock:
            entry = self._links.get(key)
            if entry is not None:
                link, count = entry
                self._links[key] = (link, count + 1)
            else:
                link = BrokerLink(address, exchanges=exchanges, identity=key,
                                  alternates=alternates, **options)
                self._links[key] = (link, 1)
                return link
        for name, kind in exchanges:
            link.declare_exchange(name, kind)
        return link

    def release(self, link: BrokerLink, *, flush_timeout: float = 2.0) -> None:
        key = link.identity
        with self._lock:
            entry = self._links.get(key)
            if entry is None or entry[0] is not link:
                return
            count = entry[1] - 1
            if count > 0:
                self._links[key] = (link, count)
                return
            del self._links[key]
        link.close(flush_timeout=flush_timeout)

    def links(self) -> list[BrokerLink]:
        with self._lock:
            return [link for link, _ in self._links.values()]


LINKS = LinkRegistry()


def flush_all(timeout: float = EXIT_FLUSH_TIMEOUT) -> bool:
    """Wait (bounded, in all) until every connected link has its messages confirmed."""
    deadline = time.monotonic() + timeout
    complete = True
    for link in LINKS.links():
        if link.buffered == 0:
            continue
        if not link.flush(max(0.0, deadline - time.monotonic())):
            complete = False
            logger.warning("exit: %d message(s) to %s not confirmed within %.1f s",
                           link.buffered, link.address, timeout)
    return complete


def _flush_at_exit() -> None:
    try:
        flush_all()
    except Exception:  # pragma: no cover - never spoil the interpreter's exit
        logger.debug("exit flush failed", exc_info=True)


atexit.register(_flush_at_exit)
