"""Every use of pika's private parts, in one place.

Two speed-ups and one pika bug fix rest on pika internals (pika 1.3/1.4):

* :class:`SharedLoop` / :class:`_SharedPoller`: the I/O loop another thread
  may briefly join to write a message at once, instead of handing it to the
  I/O thread (a wake-up and a pass of the loop: ~100 us);
* :class:`GlueConnection`: a message's frames written with one ``send(2)``
  straight to the socket, instead of three writes on the loop's next pass;
* :class:`AbortableConnection`: ``close()`` while the AMQP handshake is under
  way (a port that took the TCP connection and never answers) ends the
  connection instead of failing an assertion inside the I/O loop.

Each private attribute they need is checked when this module is imported
(and the loop's instance attributes when a loop is made). When one is
missing (another pika), the glue switches itself off with one log line and
the transport runs on pika's stock ``IOLoop`` and ``SelectConnection``:
slower, same behaviour. Nothing else in the package touches pika privates.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, PollEvents, PollPoller
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorAMQPHandshakeError,
    AMQPConnectorSocketConnectError,
)
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

from miros_rabbitmq.wire.names import CONTENT_TYPE

__all__ = [
    "GLUE_ENABLED",
    "AbortableConnection",
    "GlueConnection",
    "SharedLoop",
    "PERSISTENT",
    "TRANSIENT",
    "CONTENT_TYPE",
    "IOLoop",
    "SelectorIOServicesAdapter",
    "describe_error",
    "is_auth_error",
    "is_nack",
    "mark_io_thread",
    "on_io_thread",
]

logger = logging.getLogger(__name__)

# the pika privates the glue uses, by owner
_PRIVATES: dict[Any, tuple[str, ...]] = {
    PollPoller: ("_create_poller", "_uninit_poller", "_register_fd", "_modify_fd_events",
                 "_unregister_fd", "_dispatch_fd_events"),
    IOLoop: ("_get_poller",),
    pika.SelectConnection: ("_output_marshaled_frames", "_adapter_emit_data"),
    pika.BasicProperties: ("encode",),
}
# set on instances: checked when the first loop is made
_LOOP_PRIVATES = ("_poller", "_callbacks")
_POLLER_PRIVATES = ("_fd_events", "_fd_handlers", "_poll")


def _missing_privates() -> list[str]:
    return [f"{owner.__name__}.{name}" for owner, names in _PRIVATES.items()
            for name in names if not hasattr(owner, name)]


_missing = _missing_privates()
#: set to 0 to run on pika's stock path (to rule the glue out when debugging)
GLUE_VARIABLE = "MIROS_RABBITMQ_PIKA_GLUE"
_forced_off = os.environ.get(GLUE_VARIABLE, "1").strip() == "0"
#: False when this pika lacks a private the glue needs: stock pika paths are used
GLUE_ENABLED = not _missing and not _forced_off
if _forced_off:
    logger.info("%s=0: the transport uses pika's stock I/O loop and connection", GLUE_VARIABLE)
elif _missing:
    logger.warning("pika %s lacks %s: the transport uses pika's stock I/O loop and "
                   "connection (correct, slower); pin pika>=1.3.2,<1.5 for the fast path",
                   getattr(pika, "__version__", "?"), ", ".join(_missing))


def _switch_off(reason: str) -> None:
    global GLUE_ENABLED
    if GLUE_ENABLED:
        GLUE_ENABLED = False
        logger.warning("pika %s: %s; the transport falls back to pika's stock path",
                       getattr(pika, "__version__", "?"), reason)


class _FixedProperties(pika.BasicProperties):
    """Message properties sent unchanged with every message: encoded once, not per message."""

    def __init__(self, **properties: Any) -> None:
        super().__init__(**properties)
        self._encoded = super().encode() if GLUE_ENABLED else None

    def encode(self) -> list[bytes]:
        if self._encoded is None:
            return super().encode()
        return list(self._encoded)  # pika inserts the frame header into the list it gets

    def __repr__(self) -> str:
        return f"<BasicProperties(delivery_mode={self.delivery_mode}, content_type={self.content_type})>"


PERSISTENT = _FixedProperties(delivery_mode=2, content_type=CONTENT_TYPE)
TRANSIENT = _FixedProperties(delivery_mode=1, content_type=CONTENT_TYPE)


# --------------------------------------------------------------------------- the I/O loop


class _LockReleasingWait:
    """An epoll/poll object whose blocking wait releases the loop lock."""

    def __init__(self, poll_object: Any, lock: threading.Lock) -> None:
        self._poll_object = poll_object
        self._lock = lock
        self.register = poll_object.register
        self.modify = poll_object.modify
        self.unregister = poll_object.unregister
        # set while the loop's thread waits for the lock: guests then queue
        # their work instead, so a thread publishing in a tight loop cannot
        # keep the loop from its confirms and deliveries
        self.loop_waiting = False

    def poll(self, timeout: float) -> Any:
        self._lock.release()
        try:
            return self._poll_object.poll(timeout)
        finally:
            self.loop_waiting = True
            self._lock.acquire()
            self.loop_waiting = False

    def close(self) -> None:
        close = getattr(self._poll_object, "close", None)
        if close is not None:
            close()


class _SharedPoller(PollPoller):
    """pika's poll/epoll poller, made joinable by other threads (see SharedLoop).

    While another thread works in the loop, changes to the watched events are
    kept here, not given to the kernel: the loop's own thread, woken by them,
    would only find the work done (a wasted wake-up on the sender's path).
    """

    def __init__(self, lock: threading.Lock, get_wait_seconds: Callable[[], float | None],
                 process_timeouts: Callable[[], None]) -> None:
        self._loop_lock = lock
        self._guest_depth = 0
        self._held_back: set[int] = set()
        self._kernel_events: dict[int, int] = {}
        self._use_epoll = hasattr(select, "epoll")
        self.POLL_TIMEOUT_MULT = 1 if self._use_epoll else 1000
        super().__init__(get_wait_seconds, process_timeouts)

    def _create_poller(self) -> Any:
        poll_object = select.epoll() if self._use_epoll else select.poll()
        return _LockReleasingWait(poll_object, self._loop_lock)

    def _uninit_poller(self) -> None:
        self._kernel_events.clear()
        super()._uninit_poller()

    def _register_fd(self, fileno: int, events: int) -> None:
        if self._poll is not None:
            self._kernel_events[fileno] = events
        super()._register_fd(fileno, events)

    def _modify_fd_events(self, fileno: int, events: int, events_to_clear: int,
                          events_to_set: int) -> None:
        if self._guest_depth and fileno in self._kernel_events:
            self._held_back.add(fileno)
            return
        if self._poll is not None:
            self._kernel_events[fileno] = events
        super()._modify_fd_events(fileno, events, events_to_clear, events_to_set)

    def _unregister_fd(self, fileno: int, events_to_clear: int) -> None:
        self._held_back.discard(fileno)
        if self._kernel_events.pop(fileno, None) is not None:
            super()._unregister_fd(fileno, events_to_clear)

    def _dispatch_fd_events(self, fd_event_map: dict[int, int]) -> None:
        # a guest may have closed a socket after the kernel reported it and
        # before this thread got the lock back; pika's own check misses a
        # hang-up bit on such a stale descriptor
        for fileno in [fd for fd in fd_event_map if fd not in self._fd_handlers]:
            del fd_event_map[fileno]
        super()._dispatch_fd_events(fd_event_map)

    def _wanted(self, fileno: int) -> int:
        return sum(event for event, fds in self._fd_events.items() if fileno in fds)

    def may_join(self) -> bool:
        """False while the loop's thread has work waiting (see _LockReleasingWait)."""
        wait = self._poll
        return wait is not None and not wait.loop_waiting

    def guest_active(self) -> bool:
        return self._guest_depth > 0

    def enter_guest(self) -> None:
        self._guest_depth += 1

    def leave_guest(self) -> bool:
        """Write what the guest queued, then give the kernel the final events.

        Returns False when the loop must look (a write would block, or the
        guest scheduled work): the caller then wakes it.
        """
        try:
            for fileno in list(self._held_back):
                if fileno in self._fd_events[PollEvents.WRITE]:
                    handler = self._fd_handlers.get(fileno)
                    if handler is not None:
                        handler(fileno, PollEvents.WRITE)  # the socket is idle: send now
        finally:
            self._guest_depth -= 1
        settled = True
        for fileno in list(self._held_back):
            self._held_back.discard(fileno)
            if fileno not in self._kernel_events:
                continue
            wanted = self._wanted(fileno)
            if wanted != self._kernel_events[fileno]:
                self._kernel_events[fileno] = wanted
                if self._poll is not None:
                    self._poll.modify(fileno, wanted)
                settled = False
        return settled


class SharedLoop(IOLoop):
    """pika's IOLoop, which another thread may briefly join to send at once.

    The loop's thread holds :attr:`lock` whenever it runs (it calls
    :meth:`hold` first), and lets go of it only while it waits for the
    network. A thread that gets the lock through :meth:`try_join` may use the
    connection as if it were the loop's own thread, between
    :meth:`enter_guest` and :meth:`leave_guest`, then releases the lock.
    With the glue off, :meth:`try_join` always says no: every publish is
    handed to the I/O thread.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._guest_scheduled = False
        self.joinable = False
        super().__init__()
        self.joinable = GLUE_ENABLED
        if self.joinable:
            poller = getattr(self, "_poller", None)
            missing = [name for name in _LOOP_PRIVATES if not hasattr(self, name)]
            missing += [f"poller.{name}" for name in _POLLER_PRIVATES
                        if poller is None or not hasattr(poller, name)]
            if missing:
                _switch_off(f"its I/O loop lacks {', '.join(missing)}")
                self.joinable = False

    def _get_poller(self, get_wait_seconds: Callable[[], float | None],
                    process_timeouts: Callable[[], None]) -> Any:
        if not GLUE_ENABLED:
            return super()._get_poller(get_wait_seconds, process_timeouts)
        return _SharedPoller(self.lock, get_wait_seconds, process_timeouts)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        if self.joinable and self._poller.guest_active():
            self._guest_scheduled = True  # the loop's wait was computed without it
        return super().call_later(delay, callback)

    def hold(self) -> None:
        """The loop's own thread, before it starts: hold the lock while running."""
        self.lock.acquire()

    def let_go(self) -> None:
        self.lock.release()

    def try_join(self) -> bool:
        """Take :attr:`lock` if the loop waits for the network and nothing waits for it."""
        if not self.joinable or not self._poller.may_join():
            return False
        return self.lock.acquire(blocking=False)

    def enter_guest(self) -> None:
        """Caller holds :attr:`lock` and is not the loop's thread."""
        self._guest_scheduled = False
        self._poller.enter_guest()

    def leave_guest(self) -> None:
        """Flush the guest's writes; wake the loop if anything is left for it."""
        settled = self._poller.leave_guest()
        if not settled or self._callbacks or self._guest_scheduled:
            self._poller.wake_threadsafe()


class AbortableConnection(pika.SelectConnection):
    """pika's SelectConnection that can be closed while its AMQP handshake is under way.

    ``close()`` is pika's way to abandon a connection that is still opening.
    When it comes after the TCP connection is up but before the broker has
    finished the handshake (a port that took the connection and never speaks
    AMQP), pika 1.3/1.4's connection workflow reports the abort with the
    *class* ``AMQPConnectionWorkflowAborted`` instead of an instance
    (``AMQPConnectionWorkflow._on_connector_done``), and
    ``BaseConnection._on_connection_workflow_done`` fails an assertion on it.
    The AssertionError escapes from the I/O loop's pass: pika logs
    "protocol.connection_lost(None) failed", the loop's ``start()`` raises,
    and a ``stop()`` asked for in that pass is lost. Handing pika the
    instance it meant makes the abort take pika's own "aborted" path. A pika
    that passes an instance (or renamed the method) never reaches this code.
    """

    def _on_connection_workflow_done(self, conn_or_exc: Any) -> None:
        if isinstance(conn_or_exc, type) and issubclass(conn_or_exc, BaseException):
            conn_or_exc = conn_or_exc()
        super()._on_connection_workflow_done(conn_or_exc)


class GlueConnection(AbortableConnection):
    """pika's SelectConnection, writing each message straight to its socket.

    pika gives the method, header and body frames of a message to its
    transport one by one, and the transport sends them on the loop's next
    "writable" event, after registering for it and before unregistering:
    three send(2) calls (three TCP segments for the broker to read) and a
    round of poller bookkeeping per message, ~100 us of the sender's path
    here. Joined and sent at once when nothing is waiting in the transport's
    buffer, it is one system call; whatever the socket does not take (or any
    error) goes through pika's own path, which owns all error handling.

    Only the loop's thread or its guest (see :class:`SharedLoop`) writes.
    The direct path relies on two attributes of pika's plain-TCP transport;
    without them (TLS, another pika) it switches itself off.
    ``buffered_writes`` counts writes that went through pika's buffer.
    """

    _direct_writes = GLUE_ENABLED
    buffered_writes = 0
    _batch: list[bytes] | None = None

    def use_stock_writes(self) -> None:
        """This connection writes through pika's own path (TLS: pika writes the records)."""
        self._direct_writes = False

    def begin_batch(self) -> None:
        """Loop's thread: collect what is written until :meth:`end_batch`, then one send(2).

        A pass of the loop that publishes a batch of queued messages writes
        them together: one system call (and one release of the GIL, which a
        busy process pays for dearly) instead of one per message.
        """
        if self._direct_writes:
            self._batch = []

    def end_batch(self, *, discard: bool = False) -> None:
        """Write the batch; ``discard``: drop it (a publish failed: all of it is requeued)."""
        batch, self._batch = self._batch, None
        if batch and not discard:
            self._write(b"".join(batch) if len(batch) > 1 else batch[0])

    def _output_marshaled_frames(self, marshaled_frames: Any) -> None:
        if not self._direct_writes:
            self.buffered_writes += 1
            super()._output_marshaled_frames(marshaled_frames)
            return
        data = b"".join(marshaled_frames) if len(marshaled_frames) > 1 else marshaled_frames[0]
        self.frames_sent += len(marshaled_frames)
        self.bytes_sent += len(data)
        if self._batch is not None:
            self._batch.append(data)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        sent = self._send_directly(data)
        if sent == len(data):
            return
        self.buffered_writes += 1
        self._adapter_emit_data(data[sent:])

    def _send_directly(self, data: bytes) -> int:
        transport = self._transport
        try:
            if (type(transport).__name__ != "_AsyncPlaintextTransport"
                    or transport._state != transport._STATE_ACTIVE):
                return 0
            sock = transport._sock
        except AttributeError:
            type(self)._direct_writes = False
            _switch_off("its plain-TCP transport changed (no _state/_sock)")
            return 0
        if transport.get_write_buffer_size():
            return 0  # earlier data still queued: keep the order
        try:
            return sock.send(data)
        except OSError:  # would block, or a broken connection: pika's path handles it
            return 0


# --------------------------------------------------------------------------- pika's errors


def is_nack(method: Any) -> bool:
    return isinstance(method, pika.spec.Basic.Nack)


def is_auth_error(error: BaseException | None) -> bool:
    if isinstance(error, AMQPConnectionWorkflowFailed):
        return any(is_auth_error(getattr(e, "exception", e)) for e in error.exceptions)
    if isinstance(error, AMQPConnectorAMQPHandshakeError):
        return is_auth_error(error.exception)
    return isinstance(error, (pika.exceptions.ProbableAuthenticationError,
                              pika.exceptions.AuthenticationError,
                              pika.exceptions.ProbableAccessDeniedError))


def describe_error(error: BaseException | None) -> str:
    """A one-line reason for a connection problem, without secrets."""
    if error is None:
        return "closed"
    if is_auth_error(error):
        return "credentials refused by the broker (check RABBIT_USER / RABBIT_PASSWORD)"
    workflow = error.args[0] if error.args else None
    if isinstance(workflow, AMQPConnectionWorkflowFailed) and workflow.exceptions:
        error = workflow.exceptions[-1]  # pika wraps the failed connect in two layers
    if isinstance(error, AMQPConnectorSocketConnectError):
        return f"no TCP connection ({error.exception})"
    text = f"{type(error).__name__}: {error}"
    return text[:300]


# --------------------------------------------------------------------------- loop threads

_thread_role = threading.local()


def mark_io_thread() -> None:
    """Called first by every thread that runs an I/O loop (links, the prober)."""
    _thread_role.io = True


def on_io_thread() -> bool:
    """True on any of our I/O threads: code there must never wait for room."""
    return getattr(_thread_role, "io", False)
