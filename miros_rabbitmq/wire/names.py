"""Every name on the wire and on disk, and every default that more than one module uses.

Exchanges, routing keys, queue prefixes, file names and defaults live here
once; the other modules import them. Changing a value here changes what a
node of this version puts on the wire or looks for on disk: nodes of
different versions only interoperate while these agree.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "Network",
    "ProbeOutcome",
    "MESH_EXCHANGE",
    "SNOOP_TRACE_EXCHANGE",
    "SNOOP_SPY_EXCHANGE",
    "SCOUT_EXCHANGE",
    "SNOOP_TRACE_ROUTING_KEY",
    "SNOOP_SPY_ROUTING_KEY",
    "EXCHANGES",
    "HOSTS_FILE",
    "LAN_CACHE_FILE",
    "CACHE_FILE",
]


class Network(str, Enum):
    """The networks a token can belong to; the envelope carries one (tokens are bound to it)."""

    MESH = "mesh"
    SNOOP_TRACE = "snoop_trace"
    SNOOP_SPY = "snoop_spy"
    SCOUT = "scout"


# --------------------------------------------------------------------------- exchanges
MESH_EXCHANGE = "miros.mesh.exchange"
SNOOP_TRACE_EXCHANGE = "miros.snoop.trace.exchange"
SNOOP_SPY_EXCHANGE = "miros.snoop.spy.exchange"
#: challenges and answers only, so a challenge is never parsed as a mesh event
SCOUT_EXCHANGE = "miros.scout.exchange"
EXCHANGE_TYPE = "topic"
#: what every link declares on its broker
EXCHANGES = (
    (MESH_EXCHANGE, EXCHANGE_TYPE),
    (SNOOP_TRACE_EXCHANGE, EXCHANGE_TYPE),
    (SNOOP_SPY_EXCHANGE, EXCHANGE_TYPE),
)
EXCHANGE_OF = {
    Network.MESH: MESH_EXCHANGE,
    Network.SNOOP_TRACE: SNOOP_TRACE_EXCHANGE,
    Network.SNOOP_SPY: SNOOP_SPY_EXCHANGE,
    Network.SCOUT: SCOUT_EXCHANGE,
}

# --------------------------------------------------------------------------- routing keys
SNOOP_TRACE_ROUTING_KEY = "snoop.trace"
SNOOP_SPY_ROUTING_KEY = "snoop.spy"
#: a chart without rx_routing_key receives everything
DEFAULT_RX_ROUTING_KEY = "#"
#: the routing key of a one-off scout (``discover``)
DISCOVER_ROUTING_KEY = "miros.discover"

# --------------------------------------------------------------------------- queues
MESH_QUEUE_PREFIX = "miros.mesh."  # + the chart's identity
SCOUT_QUEUE_PREFIX = "miros.scout."  # + the chart's identity
SNOOP_QUEUE_PREFIX = "miros.snoop."  # + trace|spy . host . random
#: RabbitMQ's direct reply-to pseudo-queue (scout answers)
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# --------------------------------------------------------------------------- files
HOSTS_FILE = ".miros_rabbitmq_hosts.json"
LAN_CACHE_FILE = ".miros_rabbitmq_lan_cache.json"
CACHE_FILE = ".miros_rabbitmq_cache.json"
CONTENT_TYPE = "application/x-miros-rabbitmq"

# --------------------------------------------------------------------------- defaults
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671  # amqps: never a silent fallback to plain 5672
DEFAULT_HEARTBEAT = 30  # seconds; short enough to notice a dead peer
DEFAULT_CONNECTION_ATTEMPTS = 3
#: the scout account: scouts log in with it until a node there proved our mesh key.
#: Well known on purpose (docs/security.md): its only right is publishing to
#: SCOUT_EXCHANGE, and the challenge, not the login, proves membership.
DEFAULT_SCOUT_USER = "miros_scout"
DEFAULT_SCOUT_PASSWORD = "miros_scout"
#: the rights of the scout account: configure, write, read (rabbitmqctl set_permissions)
SCOUT_PERMISSIONS = ("^$", r"^miros\.scout\.exchange$", "^$")
#: seconds a scouted node has to answer a challenge
DEFAULT_SCOUT_TIMEOUT = 0.5
#: seconds LanRecceChart waits for the neighbour table to fill
DEFAULT_ARP_TIMEOUT_SEC = 2.0
#: minutes a LAN cache stays fresh
DEFAULT_LAN_CACHE_MINUTES = 30
#: larger messages are refused, sending and receiving
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: an abandoned chart queue lives this long on its broker (ms)
DEFAULT_QUEUE_EXPIRES_MS = 10 * 60 * 1000

# --------------------------------------------------------------------------- replay protection
#: a receiver that has no memory of a sender's epoch (it restarted) refuses
#: messages first sent longer ago than this, or stamped further in the future
DEFAULT_MAX_AGE_SEC = 6 * 60 * 60
#: out-of-order sequence numbers accepted (once each) below a sender's high-water mark
REPLAY_WINDOW = 4096
#: senders (sender, epoch) the replay filter remembers
REPLAY_SENDERS = 4096
#: a clock difference (or delay) above this many seconds is logged once per sender
SKEW_LOG_SEC = 5.0


# --------------------------------------------------------------------------- probe outcomes
class ProbeOutcome(str, Enum):
    """How a scout probe ended: results are read from this, never from message text."""

    ANSWERED = "answered"  #: a node holding our key answered the challenge
    NO_ANSWER = "no-answer"  #: a broker took the connection; no node answered in time
    TIMEOUT = "timeout"  #: no connection within the timeout (dead or silent host)
    UNRESOLVED = "unresolved"  #: the host name does not resolve
    REFUSED = "refused"  #: the host is up; nothing listens on the port
    UNREACHABLE = "unreachable"  #: no route, host down, network error before AMQP
    AUTH_REFUSED = "auth-refused"  #: the broker refused our credentials
    SCOUT_REFUSED = "scout-refused"  #: the broker refused the scout account (not created there?)
    NO_RESPONDER = "no-responder"  #: a broker, but no scout exchange or responder there
    BAD_ADDRESS = "bad-address"  #: the entry is not a host, host:port or amqp:// URL
    CANCELLED = "cancelled"  #: cancelled before a verdict
    ERROR = "error"  #: anything else (the reason text says what)
