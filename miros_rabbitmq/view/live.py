"""Joining the snoop networks without being a chart (``snoop``, ``view``, ``list``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from miros_rabbitmq.config import Settings
from miros_rabbitmq.errors import Error
from miros_rabbitmq.mesh import snoop as snooping
from miros_rabbitmq.transport import process_brokers

__all__ = ["listen", "ListenError"]


class ListenError(Error):
    """The local broker could not be joined (unreachable, credentials refused)."""


def listen(settings: Settings, tap: Callable[[str, Any], None] | None, *,
           networks: Iterable[str] = (snooping.TRACE, snooping.SPY),
           timeout: float = 5.0, stop: Callable[[], bool] = lambda: False,
           quiet: bool = True, **options: Any) -> list[snooping.SnoopListener]:
    """Snoop listeners on this process's broker handing every message to ``tap``.

    ``quiet`` (the default): they print nothing; ``options`` go to each
    :class:`~miros_rabbitmq.mesh.snoop.SnoopListener` (``color``, ``grep``,
    ``write``, ``render``, ...). Returns once all consume; raises
    :class:`ListenError` (listeners stopped) when the broker does not answer
    within ``timeout``, refuses us, or ``stop()`` turns true meanwhile.
    """
    # TLS and all, as the charts reach it; in cluster mode the cluster, with failover
    try:
        address, alternates = process_brokers(settings)
    except Error as bad:  # a bad RABBIT_CLUSTER entry (the text shows no password)
        raise ListenError(str(bad)) from None
    listeners = [snooping.SnoopListener(
        address, network,
        settings.snoop_trace_keys if network == snooping.TRACE else settings.snoop_spy_keys,
        heartbeat=settings.heartbeat, tap=tap, quiet=quiet, alternates=alternates, **options)
        for network in networks]
    try:
        for listener in listeners:
            listener.start(timeout=0)
        deadline = time.monotonic() + timeout
        for listener in listeners:
            while not listener.ready.wait(0.05):
                link = listener.link
                error = link.last_error if link is not None else None
                refused = link is not None and link.auth_failed.is_set()
                if stop() or time.monotonic() >= deadline or refused:
                    raise ListenError(f"cannot listen at {address.url}: "
                                      f"{error or f'no answer within {timeout:g} s'}")
    except BaseException:
        for listener in listeners:
            listener.stop()
        raise
    return listeners
