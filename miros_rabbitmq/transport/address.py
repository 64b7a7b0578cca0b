"""Broker addresses: where a broker is, how to log in (TLS or not), and when two are
the same broker."""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import ifaddr
import pika

from miros_rabbitmq.config import Secret, Settings, TlsConfig, mask_url
from miros_rabbitmq.errors import PeerAddressError
from miros_rabbitmq.wire.names import DEFAULT_TLS_PORT

__all__ = ["BrokerAddress", "local_addresses", "local_broker", "parse_peer", "ssl_options"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is and how to log in. ``str()`` never shows the password."""

    host: str
    port: int
    vhost: str
    user: str
    password: Secret = field(compare=False)
    #: TLS settings (amqps://); None: plain TCP. Never downgraded silently.
    tls: TlsConfig | None = field(default=None, compare=False)
    #: the entry named its own user and password (``amqp://user:pass@host``):
    #: scouts may log in with them (docs/security.md, "The scout account")
    own_login: bool = field(default=False, compare=False)

    @property
    def url(self) -> str:
        """The AMQP URL with the password masked (for logs and display)."""
        return mask_url(self._url(self.password.reveal()))

    def secret_url(self) -> str:
        """The AMQP URL with the password: hand it to a client, never to a log."""
        return self._url(self.password.reveal())

    def _url(self, password: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = urllib.parse.quote(self.vhost, safe="")
        user = urllib.parse.quote(self.user, safe="")
        scheme = "amqps" if self.tls is not None else "amqp"
        return f"{scheme}://{user}:{urllib.parse.quote(password, safe='')}@{host}:{self.port}/{vhost}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"BrokerAddress({self.url!r})"

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def identity(self) -> tuple[str, int, str, str]:
        """A key equal for two addresses that reach the same broker as the same user.

        ``localhost``, ``127.0.0.1``, ``::1`` and this machine's own interface
        addresses are one broker; a hostname is resolved to its address (the
        answer is cached for a minute; never call this on an I/O thread for a
        name: see :meth:`cached_identity`).
        """
        return (_canonical_ip(self.host) or self.host.lower(), self.port, self.vhost, self.user)

    def cached_identity(self) -> tuple[str, int, str, str] | None:
        """:meth:`identity` without any DNS lookup: None for a name not resolved yet."""
        ip = _canonical_ip(self.host, resolve=False)
        return None if ip is None else (ip, self.port, self.vhost, self.user)


def local_broker(settings: Settings) -> BrokerAddress:
    """This node's own broker (``RABBIT_HOST``/``RABBIT_PORT``; TLS with ``RABBIT_TLS``)."""
    return BrokerAddress(settings.rabbit_host, settings.rabbit_port, settings.rabbit_vhost,
                         settings.rabbit_user, settings.rabbit_password,
                         settings.tls_config if settings.rabbit_tls else None)


def _shown(text: str) -> str:
    """``text`` for an error message: anything before an ``@`` may be a login."""
    if "://" in text:
        return mask_url(text)
    if "@" in text:
        return "******@" + text.rpartition("@")[2]
    return text


def parse_peer(entry: str, settings: Settings) -> BrokerAddress:
    """Parse ``host``, ``host:port``, ``[v6]:port`` or ``amqp[s]://user:pass@host:port/vhost``.

    Missing parts come from ``settings``. ``amqps://`` is TLS (port 5671 by
    default), whatever ``RABBIT_TLS`` says; ``amqp://`` is plain TCP; a bare
    host uses TLS when ``RABBIT_TLS`` is on. Raises :class:`PeerAddressError`,
    whose text never shows a password.
    """
    text = str(entry).strip()
    if not text:
        raise PeerAddressError("empty peer address")
    if "://" in text:
        try:
            parsed = urllib.parse.urlsplit(text)
            hostname = parsed.hostname
        except ValueError:
            raise PeerAddressError(f"not an amqp:// URL: {_shown(text)}") from None
        if parsed.scheme not in ("amqp", "amqps") or not hostname or not text.isprintable():
            raise PeerAddressError(f"not an amqp:// URL: {_shown(text)!r}")
        tls = settings.tls_config if parsed.scheme == "amqps" else None
        if tls is not None:
            default_port = settings.rabbit_port if settings.rabbit_tls else DEFAULT_TLS_PORT
        else:
            default_port = 5672 if settings.rabbit_tls else settings.rabbit_port
        try:
            port = parsed.port or default_port
        except ValueError:
            raise PeerAddressError(f"bad port in {_shown(text)}") from None
        vhost = urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else settings.rabbit_vhost
        user = urllib.parse.unquote(parsed.username) if parsed.username else settings.rabbit_user
        password = (Secret(urllib.parse.unquote(parsed.password)) if parsed.password is not None
                    else settings.rabbit_password)
        return BrokerAddress(hostname, port, vhost, user, password, tls,
                             own_login=bool(parsed.username) and parsed.password is not None)
    if "@" in text:
        raise PeerAddressError(f"a login needs an amqp:// URL: {_shown(text)}")
    host, port = text, settings.rabbit_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, raw_port = text.partition(":")
        port = _port(raw_port, text)
    if not host or any(c.isspace() for c in host) or "/" in host or not host.isprintable():
        raise PeerAddressError(f"not a host, host:port or amqp:// URL: {text!r}")
    return BrokerAddress(host, port, settings.rabbit_vhost, settings.rabbit_user,
                         settings.rabbit_password,
                         settings.tls_config if settings.rabbit_tls else None)


@functools.lru_cache(maxsize=16)
def _ssl_context(tls: TlsConfig) -> Any:
    return tls.context()


def ssl_options(address: BrokerAddress) -> pika.SSLOptions | None:
    """pika's TLS options for ``address`` (None for plain TCP); the certificate
    is verified against ``tls.ca_file`` and, by default, must name the host."""
    if address.tls is None:
        return None
    return pika.SSLOptions(_ssl_context(address.tls), server_hostname=address.host)


def _port(raw: str, text: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise PeerAddressError(f"bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise PeerAddressError(f"port out of range in {text!r}")
    return port


_local_ips: frozenset[str] | None = None


def local_addresses() -> frozenset[str]:
    """This machine's (this network namespace's) own interface addresses."""
    global _local_ips
    if _local_ips is None:
        found: set[str] = set()
        try:
            for adapter in ifaddr.get_adapters():
                for ip in adapter.ips:
                    found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
        except Exception:  # pragma: no cover - exotic platforms
            logger.debug("could not list interface addresses", exc_info=True)
        _local_ips = frozenset(found)
    return _local_ips


_RESOLVED_TTL = 60.0
_RESOLVED_MAX = 4096
_resolved: dict[str, tuple[float, str]] = {}


def _canonical_ip(host: str, *, resolve: bool = True) -> str | None:
    try:
        ip = str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM,
                                    flags=socket.AI_NUMERICHOST)[0][4][0])
    except (OSError, UnicodeError):  # a name, not an address
        now = time.monotonic()
        cached = _resolved.get(host)
        if cached is not None and cached[0] > now:
            ip = cached[1]
        elif not resolve:
            return None
        else:
            try:
                ip = str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
            except (OSError, UnicodeError):
                return host.lower()
            if len(_resolved) >= _RESOLVED_MAX:
                _resolved.clear()
            _resolved[host] = (now + _RESOLVED_TTL, ip)
    try:
        parsed = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if parsed.is_loopback or ip in local_addresses():
        return "local"
    return str(parsed)
