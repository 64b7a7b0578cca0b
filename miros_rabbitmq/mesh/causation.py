"""Causation ids: which received event a chart was handling when it transmitted.

Every mesh message has an id, ``sender:seq`` (:attr:`Envelope.event_id`), and
carries the id of the event whose handling transmitted it
(:attr:`Envelope.causation`, empty when none), like nameko's call-id stack.
``miros-rabbitmq view`` draws each arrow from the sending transition to the
receiving one with them, and follows a whole causal chain across charts.

The bookkeeping rides on the miros events themselves and on the chart's
queue; it costs a dictionary lookup per event:

* an event from the network is tagged with its :class:`Context` (its own id,
  its cause, ``received=True``) before it is posted;
* when the chart's thread takes an event from its queue, that event's
  context becomes the chart's *current* one;
* an event the chart posts to itself while handling a tagged event inherits
  the id (``received=False``): a chain goes on through local events, so a
  transmission made two local events later still names the network event
  that started it;
* ``transmit`` on the chart's thread names the current id as the causation.

Events posted by other threads (timers, the caller's thread, publish/
subscribe) start no chain and inherit none.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from miros_rabbitmq._miros import RoomyDeque

__all__ = ["Context", "ATTRIBUTE", "context_of", "tag", "Tracker", "CausalDeque"]

ATTRIBUTE = "_miros_rabbitmq_context"  # the attribute set on a miros Event


class Context(NamedTuple):
    """What a chart knows about the event it is handling."""

    event: str  # the id of the network event this handling belongs to
    cause: str  # the id of the event that caused it ("" = none known)
    received: bool  # True: this very event came from the network; False: inherited
    signal: str = ""  # the received event's signal name


def context_of(item: Any) -> Context | None:
    """The context tagged on ``item``, if any.

    Not ``getattr``: a miros Event's ``__getattr__`` raises KeyError for a
    missing attribute.
    """
    try:
        return item.__dict__.get(ATTRIBUTE)
    except AttributeError:
        return None


def tag(item: Any, context: Context) -> None:
    """Put ``context`` on ``item`` (a no-op for objects without a ``__dict__``)."""
    try:
        item.__dict__[ATTRIBUTE] = context
    except AttributeError:
        pass


class Tracker:
    """A chart queue's view of causation (mixed into the queue; see networked.py).

    ``taken(item)`` runs on the chart's thread for each event it takes;
    ``posted(item)`` for each event put in the queue, on any thread.
    ``on_receive(context)`` (set by snoop when the trace is on) is told of
    each network event the chart starts handling.
    """

    def __init__(self) -> None:
        self.current: Context | None = None
        self.owner: int | None = None  # the thread that takes events (the chart's)
        self.on_receive: Any = None

    def taken(self, item: Any) -> None:
        context = context_of(item)
        self.current = context
        self.owner = threading.get_ident()
        callback = self.on_receive
        if callback is not None and context is not None and context.received:
            try:
                callback(context)
            except Exception:  # instrumentation never breaks the chart
                pass

    def posted(self, item: Any) -> None:
        current = self.current
        if current is not None and self.owner == threading.get_ident() \
                and context_of(item) is None:
            tag(item, Context(current.event, current.cause, False, current.signal))

    def causation(self) -> str:
        """The id to put on a message transmitted now ("" off the chart's thread)."""
        current = self.current
        if current is None or self.owner != threading.get_ident():
            return ""
        return current.event


class CausalDeque(RoomyDeque):
    """A networked chart's queue: :class:`~miros_rabbitmq._miros.RoomyDeque` plus the
    causation bookkeeping (:attr:`causes`)."""

    def __init__(self, resume_below: int) -> None:
        super().__init__(resume_below)
        self.causes = Tracker()

    def append(self, item: Any) -> None:
        self.causes.posted(item)
        super().append(item)

    def appendleft(self, item: Any) -> None:
        self.causes.posted(item)
        super().appendleft(item)

    def popleft(self) -> Any:
        item = super().popleft()
        self.causes.taken(item)
        return item
