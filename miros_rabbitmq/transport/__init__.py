"""The AMQP edge: the only package that imports pika.

One :class:`BrokerLink` per broker per process, shared by every chart and
every network of that process (refcounted in :data:`LINKS`). Modules, one
idea each:

* :mod:`.address`  -- :class:`BrokerAddress`, :func:`parse_peer`
* :mod:`.outbox`   -- the buffer and publisher-confirm rules (plain code)
* :mod:`.link`     -- :class:`BrokerLink`: connection, publishing, flow control, reconnects
* :mod:`.consumer` -- :class:`Consumer`: one queue, acks batched per loop pass
* :mod:`.probe`    -- :class:`Probe` / :class:`Responder`: request/answer round trips
* :mod:`.registry` -- :data:`LINKS`, the exit flush
* :mod:`._pika_glue` -- every use of pika privates, with a stock fallback

Delivery guarantees at this layer:

* publishing: a message stays in the link's buffer until the broker confirmed
  it; on a lost connection the unconfirmed ones go back to the front of the
  buffer and are sent again, in order, after the reconnect;
* consuming: a delivery is acked only after the consumer callback accepted
  it; a callback that says "no room" parks the delivery (prefetch bounds how
  many) until :meth:`Consumer.resume` is called.
"""

from miros_rabbitmq.transport._pika_glue import on_io_thread
from miros_rabbitmq.transport.address import (
    BrokerAddress,
    local_addresses,
    local_broker,
    parse_peer,
    ssl_options,
)
from miros_rabbitmq.transport.consumer import Consumer
from miros_rabbitmq.transport.link import BrokerLink, LinkStats
from miros_rabbitmq.transport.outbox import (
    DEFAULT_MAX_BYTES,
    DEFAULT_WINDOW,
    DROP_NEW,
    DROP_OLDEST,
    Outcome,
)
from miros_rabbitmq.transport.probe import (
    DIRECT_REPLY_TO,
    PROBER,
    TIMEOUT_AFTER_CONNECT,
    Probe,
    ProbeBody,
    Prober,
    ProbeResult,
    Responder,
    probe,
)
from miros_rabbitmq.transport.registry import LINKS, LinkRegistry, flush_all

__all__ = [
    "BrokerAddress",
    "BrokerLink",
    "Consumer",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_WINDOW",
    "DIRECT_REPLY_TO",
    "DROP_NEW",
    "DROP_OLDEST",
    "LINKS",
    "LinkRegistry",
    "LinkStats",
    "Outcome",
    "PROBER",
    "Probe",
    "ProbeBody",
    "ProbeResult",
    "Prober",
    "Responder",
    "TIMEOUT_AFTER_CONNECT",
    "flush_all",
    "local_addresses",
    "local_broker",
    "on_io_thread",
    "parse_peer",
    "probe",
    "ssl_options",
]
