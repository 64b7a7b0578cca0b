"""Joining the snoop networks without being a chart (``view``, ``list``, ``snoop --record``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from miros_rabbitmq.config import Settings
from miros_rabbitmq.errors import Error
from miros_rabbitmq.mesh import snoop as snooping
from miros_rabbitmq.transport import local_broker

__all__ = ["listen", "ListenError"]


class ListenError(Error):
    """The local broker could not be joined (unreachable, credentials refused)."""


def listen(settings: Settings, tap: Callable[[str, Any], None], *,
           networks: Iterable[str] = (snooping.TRACE, snooping.SPY),
           timeout: float = 5.0, stop: Callable[[], bool] = lambda: False,
           ) -> list[snooping.SnoopListener]:
    """Quiet snoop listeners on the local broker handing every message to ``tap``.

    Returns once all consume; raises :class:`ListenError` (listeners stopped)
    when the broker does not answer within ``timeout`` or refuses us.
    """
    address = local_broker(settings)  # TLS and all, as the charts reach it
    listeners = [snooping.SnoopListener(
        address, network,
        settings.snoop_trace_keys if network == snooping.TRACE else settings.snoop_spy_keys,
        heartbeat=settings.heartbeat, tap=tap, quiet=True) for network in networks]
    try:
        for listener in listeners:
            listener.start(timeout=0)
        deadline = time.monotonic() + timeout
        for listener in listeners:
            while not listener.ready.wait(0.05):
                link = listener.link
                error = link.last_error if link is not None else None
                refused = link is not None and link.auth_failed.is_set()
                if stop() or time.monotonic() >= deadline or refused or (
                        error and "credentials" in error):
                    raise ListenError(f"cannot listen at {address.url}: "
                                      f"{error or f'no answer within {timeout:g} s'}")
    except BaseException:
        for listener in listeners:
            listener.stop()
        raise
    return listeners
