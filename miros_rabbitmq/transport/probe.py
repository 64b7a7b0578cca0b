"""One request/answer round trip: :class:`Probe` asks, :class:`Responder` answers.

A probe opens a short-lived connection of its own (the broker is usually not
a peer yet), consumes RabbitMQ's direct reply-to, publishes one request and
waits for an accepted answer, a "no", or its timeout. Every probe of the
process runs on one prober I/O thread that lives while probes do. A
responder is a consumer on a link that answers each request.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorSocketConnectError,
)

from miros_rabbitmq.transport._pika_glue import (
    CONTENT_TYPE,
    AbortableConnection,
    IOLoop,
    SelectorIOServicesAdapter,
    describe_error,
    is_auth_error,
    mark_io_thread,
)
from miros_rabbitmq.transport.address import BrokerAddress, ssl_options
from miros_rabbitmq.transport.consumer import Consumer
from miros_rabbitmq.wire.names import DIRECT_REPLY_TO, ProbeOutcome

__all__ = [
    "DIRECT_REPLY_TO",
    "PROBER",
    "TIMEOUT_AFTER_CONNECT",
    "Probe",
    "ProbeResult",
    "Prober",
    "Responder",
    "probe",
]

logger = logging.getLogger(__name__)


class Responder(Consumer):
    """A consumer that answers: ``on_request(body) -> bytes | None``.

    The answer goes back to the requester's ``reply_to`` (RabbitMQ direct
    reply-to: ``amq.rabbitmq.reply-to``), with its ``correlation_id``. None
    means "no answer". Every request is acked; a callback that raises is
    logged and answers nothing.
    """

    def __init__(
        self,
        *,
        exchange: str,
        routing_keys: Iterable[str],
        on_request: Callable[[bytes], bytes | None],
        queue: str = "",
        exchange_type: str = "topic",
        prefetch: int = 64,
    ) -> None:
        super().__init__(exchange=exchange, routing_keys=routing_keys, on_message=_taken,
                         queue=queue, exchange_type=exchange_type, prefetch=prefetch)
        self.on_request = on_request
        self.answered = 0
        self.bad_reply_to = 0

    # -- I/O thread only
    def handle_delivery(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            answer = self.on_request(body)
        except Exception:  # a responder bug must not kill the I/O thread
            logger.exception("responder of %s raised; request dropped", self.queue)
            answer = None
        reply_to = getattr(properties, "reply_to", None)
        if answer is not None and not _is_direct_reply_to(reply_to):
            # only RabbitMQ's direct reply-to: an answer published to a named queue
            # would let a requester inject it into any queue of this broker
            self.bad_reply_to += 1
            answer = None
        if answer is not None and reply_to:
            try:  # a requester that is gone: the broker drops the answer
                channel.basic_publish(
                    "", reply_to, answer,
                    pika.BasicProperties(delivery_mode=1, content_type=CONTENT_TYPE,
                                         correlation_id=properties.correlation_id))
                self.answered += 1
            except Exception as error:
                logger.debug("could not answer on %s: %s", self.queue, describe_error(error))
        channel.basic_ack(method.delivery_tag)


def _taken(_body: bytes) -> bool:
    return True


def _is_direct_reply_to(reply_to: Any) -> bool:
    """A name RabbitMQ gave a direct reply-to consumer (``amq.rabbitmq.reply-to.*``)."""
    return (isinstance(reply_to, str) and reply_to.startswith(DIRECT_REPLY_TO + ".")
            and len(reply_to) <= 255 and reply_to.isprintable())



PROBE_CLOSE_GRACE = 2.0  # seconds a finished probe waits for its broker's Close-Ok
# pika's own connect timeouts come this long after the probe's deadline: the probe's
# deadline always ends a connection first (one quiet abort, not pika's timeout path)
PIKA_TIMEOUT_SLACK = 1.0
#: a probe's reason when the port took the connection but no answer came in time
TIMEOUT_AFTER_CONNECT = "timeout (the port answered; no node holding our key did)"

#: what a probe publishes: bytes, or ``body(ip, port)`` made once the connection is up
ProbeBody = bytes | Callable[[str, int], bytes]


@dataclass(frozen=True)
class ProbeResult:
    """How a probe ended: ``ok`` when an answer was accepted; ``outcome`` says
    why not (read it, not ``reason``, which is text for people)."""

    ok: bool
    reason: str
    elapsed: float
    outcome: ProbeOutcome = ProbeOutcome.ERROR


def _outcome_of(error: BaseException | None) -> ProbeOutcome:
    """The outcome of a connection or channel failure."""
    if error is None:
        return ProbeOutcome.ERROR
    if is_auth_error(error):
        return ProbeOutcome.AUTH_REFUSED
    workflow = error.args[0] if error.args else None
    if isinstance(workflow, AMQPConnectionWorkflowFailed) and workflow.exceptions:
        error = workflow.exceptions[-1]
    if isinstance(error, AMQPConnectorSocketConnectError):
        cause = error.exception
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == \
                errno.ECONNREFUSED:
            return ProbeOutcome.REFUSED
        return ProbeOutcome.UNREACHABLE
    if getattr(error, "reply_code", None) == 404:  # no scout exchange on that broker
        return ProbeOutcome.NO_RESPONDER
    if getattr(error, "reply_code", None) in (403, 530):  # access refused, vhost not allowed
        return ProbeOutcome.AUTH_REFUSED
    return ProbeOutcome.ERROR


class Probe:
    """One request/answer round trip on a short-lived connection of its own.

    Made by :func:`probe`; lives on the shared prober I/O thread. ``closed``
    is set once its connection (and socket) is gone.
    """

    def __init__(self, prober: Prober, loop: IOLoop, services: Any, address: BrokerAddress, *,
                 exchange: str, routing_key: str, body: ProbeBody,
                 accept: Callable[[bytes], bool], timeout: float,
                 on_done: Callable[[ProbeResult], None] | None) -> None:
        self.address = address
        self.exchange = exchange
        self.routing_key = routing_key
        self.timeout = timeout
        self.result: ProbeResult | None = None
        self.closed = threading.Event()
        self._prober = prober
        self._loop = loop
        self._services = services
        self._body = body
        self._accept = accept
        self._on_done = on_done
        self._started_at = time.monotonic()
        self._correlation_id = f"{random.getrandbits(64):016x}"
        self._connection: Any = None
        self._channel: Any = None
        self._timer: Any = None
        self._grace_timer: Any = None
        self._pending: Any = None  # a resolution or a TCP connect under way
        self._sock: socket.socket | None = None
        self._addresses: list[Any] = []
        self._target = ""
        self._tcp_error = "refused"
        self._tcp_errno = errno.ECONNREFUSED

    def __repr__(self) -> str:
        return f"Probe({self.address.url!r}, result={self.result!r})"

    def cancel(self) -> None:
        """Thread-safe: end the probe now (no callback) and release its connection."""
        self._on_done = None
        if self.result is None:
            try:
                self._loop.add_callback_threadsafe(lambda: self._finish(False, "cancelled", ProbeOutcome.CANCELLED))
            except Exception:  # the loop is gone: so is the probe
                pass

    # -- I/O thread only
    def _remaining(self) -> float:
        return self.timeout - (time.monotonic() - self._started_at)

    def _start(self) -> None:
        if self.result is not None:  # cancelled before it began
            self._release()
            return
        self._timer = self._loop.call_later(max(0.001, self._remaining()), self._on_deadline)
        self._pending = self._services.getaddrinfo(
            self.address.host, self.address.port, self._guarded(self._on_resolved),
            socktype=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)

    def _on_deadline(self) -> None:
        # past the TCP knock, silence means a broker without a node that holds our key
        if self._connection is None:
            self._finish(False, "timeout", ProbeOutcome.TIMEOUT)
        else:
            self._finish(False, TIMEOUT_AFTER_CONNECT, ProbeOutcome.NO_ANSWER)

    def _on_resolved(self, records: Any) -> None:
        self._pending = None
        if isinstance(records, BaseException):
            self._finish(False, f"cannot resolve {self.address.host} ({records})",
                         ProbeOutcome.UNRESOLVED)
            return
        self._addresses = [record[4] for record in records]
        self._knock()

    def _knock(self) -> None:
        """A bare TCP connect first: a closed port or a dead address costs no AMQP
        machinery (and a broker logs nothing for a connection without a header)."""
        if self.result is not None:
            return
        if not self._addresses:
            self._finish(False, f"no TCP connection ({self._tcp_error})",
                         ProbeOutcome.REFUSED if self._tcp_errno == errno.ECONNREFUSED
                         else ProbeOutcome.UNREACHABLE)
            return
        target = self._addresses.pop(0)
        sock = self._sock = socket.socket(
            socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._services.set_writer(sock.fileno(), self._guarded(
                lambda: self._on_knocked(target, sock.getsockopt(socket.SOL_SOCKET,
                                                                 socket.SO_ERROR))))
            self._pending = _Writer(self._services, sock.fileno())
        else:
            self._on_knocked(target, code)

    def _on_knocked(self, target: Any, code: int) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if code:
            self._tcp_error = f"[Errno {code}] {os.strerror(code)}"
            self._tcp_errno = code
            self._knock()  # the next address of that name, if any
            return
        if self.result is not None:
            return
        self._target = target[0]
        remaining = max(0.001, self._remaining()) + PIKA_TIMEOUT_SLACK
        parameters = pika.ConnectionParameters(
            host=target[0],
            port=self.address.port,
            virtual_host=self.address.vhost,
            credentials=pika.PlainCredentials(self.address.user, self.address.password.reveal()),
            ssl_options=ssl_options(self.address),  # server_hostname: the name we were given
            heartbeat=0,  # the connection lives for one round trip
            connection_attempts=1,
            socket_timeout=remaining,
            stack_timeout=remaining,
            blocked_connection_timeout=remaining,
            client_properties={"connection_name": "miros-rabbitmq-probe"},
        )
        # close() may come while the AMQP handshake is under way (a port that took
        # the connection and never answers): AbortableConnection survives that
        self._connection = AbortableConnection(
            parameters,
            on_open_callback=self._guarded(self._on_open),
            on_open_error_callback=self._guarded(self._on_open_error),
            on_close_callback=self._guarded(self._on_closed),
            custom_ioloop=self._services,
        )

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as error:  # never let a probe take the shared loop down
                logger.exception("probe of %s failed", self.address)
                self._finish(False, describe_error(error))
        return run

    def _on_open(self, connection: Any) -> None:
        if self.result is not None:
            self._close()
            return
        connection.channel(on_open_callback=self._guarded(self._on_channel))

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        if self.result is not None:
            self._close()
            return
        channel.add_on_close_callback(self._guarded(self._on_channel_closed))
        channel.add_on_return_callback(self._guarded(self._on_return))
        channel.basic_consume(DIRECT_REPLY_TO, self._guarded(self._on_reply), auto_ack=True,
                              callback=self._guarded(self._on_consuming))

    def _on_consuming(self, _frame: Any) -> None:
        if self.result is not None or self._channel is None or not self._channel.is_open:
            return
        expiration = str(max(1, int(self._remaining() * 1000)))
        # a body made now can name the address and port this connection reached
        body = self._body(self._target, self.address.port) if callable(self._body) else self._body
        self._channel.basic_publish(
            self.exchange, self.routing_key, body,
            pika.BasicProperties(delivery_mode=1, content_type=CONTENT_TYPE,
                                 reply_to=DIRECT_REPLY_TO, correlation_id=self._correlation_id,
                                 expiration=expiration),
            mandatory=True)  # no queue bound: the broker returns it, a fast "no"

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        if self.result is not None or properties.correlation_id != self._correlation_id:
            return
        if self._accept(body):
            self._finish(True, "answered", ProbeOutcome.ANSWERED)

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        self._finish(False, "no responder on that broker", ProbeOutcome.NO_RESPONDER)

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        self._channel = None
        # e.g. 404: the exchange does not exist there
        self._finish(False, describe_error(reason), _outcome_of(reason))

    def _on_open_error(self, _connection: Any, error: BaseException) -> None:
        self._finish(False, describe_error(error), _outcome_of(error))
        self._release()

    def _on_closed(self, _connection: Any, reason: BaseException) -> None:
        self._finish(False, describe_error(reason), _outcome_of(reason))
        self._release()

    def _finish(self, ok: bool, reason: str,
                outcome: ProbeOutcome = ProbeOutcome.ERROR) -> None:
        if self.result is not None:
            return
        self.result = ProbeResult(ok, reason, time.monotonic() - self._started_at, outcome)
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            try:
                on_done(self.result)
            except Exception:
                logger.exception("probe callback failed")
        self._close()

    def _close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        connection = self._connection
        if connection is None or connection.is_closed:
            self._release()
            return
        if not connection.is_closing:
            try:
                connection.close()
            except Exception:
                self._release()
                return
        # a broker that never sends Close-Ok must not hold the probe forever
        if self._grace_timer is None:
            self._grace_timer = self._loop.call_later(PROBE_CLOSE_GRACE, self._release)

    def _release(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._grace_timer is not None:
            self._loop.remove_timeout(self._grace_timer)
            self._grace_timer = None
        self._connection = None
        self._channel = None
        self._prober._released(self._loop)


class _Writer:
    """A pending non-blocking connect: cancel() stops watching its socket."""

    def __init__(self, services: Any, fd: int) -> None:
        self._services = services
        self._fd: int | None = fd

    def cancel(self) -> bool:
        if self._fd is None:
            return False
        self._services.remove_writer(self._fd)
        self._fd = None
        return True


class _Resolved:
    """An already-resolved getaddrinfo answer, delivered from the loop like pika's."""

    def __init__(self, loop: IOLoop, on_done: Callable[..., None], records: Any) -> None:
        self._on_done: Callable[..., None] | None = on_done
        self._records = records
        loop.add_callback_threadsafe(self._fire)

    def _fire(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self._records)

    def cancel(self) -> bool:
        if self._on_done is None:
            return False
        self._on_done = None
        return True


class _ProbeServices(SelectorIOServicesAdapter):
    """pika's I/O services, minus a resolver thread per connection for IP literals."""

    def getaddrinfo(self, host: str, port: int, on_done: Callable[..., None], family: int = 0,
                    socktype: int = 0, proto: int = 0, flags: int = 0) -> Any:
        try:
            records = socket.getaddrinfo(host, port, family, socktype, proto,
                                         flags | socket.AI_NUMERICHOST)
        except (OSError, UnicodeError):  # a name: pika resolves it on a helper thread
            return super().getaddrinfo(host, port, on_done, family, socktype, proto, flags)
        return _Resolved(self.get_native_ioloop(), on_done, records)


class Prober:
    """Runs every probe of the process on one I/O thread (one pika IOLoop).

    The thread starts with the first probe and ends when the last one has
    released its connection, so an idle process holds no prober thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loop: IOLoop | None = None
        self._services: Any = None
        self._thread: threading.Thread | None = None
        self._active = 0

    def probe(self, address: BrokerAddress, *, exchange: str, routing_key: str, body: ProbeBody,
              accept: Callable[[bytes], bool], timeout: float,
              on_done: Callable[[ProbeResult], None] | None = None) -> Probe:
        if timeout <= 0:
            raise ValueError(f"a probe needs a positive timeout, got {timeout!r}")
        with self._lock:
            if self._loop is None:
                self._loop = IOLoop()
                self._services = _ProbeServices(self._loop)
                self._thread = threading.Thread(target=self._run, args=(self._loop,),
                                                name="miros-rabbitmq-probe", daemon=True)
                self._thread.start()
            self._active += 1
            loop, services = self._loop, self._services
        probe = Probe(self, loop, services, address, exchange=exchange, routing_key=routing_key,
                      body=body, accept=accept, timeout=timeout, on_done=on_done)
        loop.add_callback_threadsafe(probe._start)
        return probe

    @property
    def active(self) -> int:
        """Probes whose connection is not released yet."""
        return self._active

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no probe is left and the prober thread has ended."""
        deadline = time.monotonic() + timeout
        with self._idle:
            if not self._idle.wait_for(lambda: self._active == 0, timeout):
                return False
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            return not thread.is_alive()
        return True

    # -- I/O thread
    def _released(self, loop: IOLoop) -> None:
        with self._lock:
            self._active -= 1
            last = self._active == 0 and self._loop is loop
            if last:
                self._loop = None
                self._services = None
                self._idle.notify_all()
        if last:
            loop.stop()

    def _run(self, loop: IOLoop) -> None:
        mark_io_thread()
        try:
            while True:
                try:
                    loop.start()
                    return
                except Exception:  # pragma: no cover - the probes guard their callbacks
                    # start() forgets a stop() asked for in the failed pass: a loop the
                    # last probe has let go must end, not run on with nothing to do
                    with self._lock:
                        orphaned = self._loop is not loop
                    logger.exception("prober I/O loop failed; %s",
                                     "ending it" if orphaned else "restarting it")
                    if orphaned:
                        return
        finally:
            try:
                loop.close()
            except Exception:  # pragma: no cover
                pass


PROBER = Prober()


def probe(address: BrokerAddress, *, exchange: str, routing_key: str, body: ProbeBody,
          accept: Callable[[bytes], bool], timeout: float,
          on_done: Callable[[ProbeResult], None] | None = None) -> Probe:
    """Publish ``body`` to ``exchange`` at ``address`` and wait for an accepted answer.

    Opens a connection of its own (the broker is usually not a peer yet),
    consumes RabbitMQ's direct reply-to, publishes ``body`` (mandatory, with
    ``reply_to``) and calls ``on_done(ProbeResult)`` on the prober thread as
    soon as ``accept(answer)`` is True, the broker says nobody is there, the
    connection fails, or ``timeout`` seconds passed, whichever comes first;
    then closes the connection. Never blocks; thread-safe.
    """
    return PROBER.probe(address, exchange=exchange, routing_key=routing_key, body=body,
                        accept=accept, timeout=timeout, on_done=on_done)
