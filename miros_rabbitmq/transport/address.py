"""Broker addresses: where a broker is, how to log in, and when two are the same broker."""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse
from dataclasses import dataclass, field

import ifaddr

from miros_rabbitmq.config import Secret, Settings, mask_url
from miros_rabbitmq.errors import PeerAddressError

__all__ = ["BrokerAddress", "parse_peer", "local_addresses"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is and how to log in. ``str()`` never shows the password."""

    host: str
    port: int
    vhost: str
    user: str
    password: Secret = field(compare=False)

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
        return f"amqp://{user}:{urllib.parse.quote(password, safe='')}@{host}:{self.port}/{vhost}"

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
        addresses are one broker; a hostname is resolved to its address.
        """
        return (_canonical_ip(self.host), self.port, self.vhost, self.user)


def parse_peer(entry: str, settings: Settings) -> BrokerAddress:
    """Parse ``host``, ``host:port``, ``[v6]:port`` or ``amqp://user:pass@host:port/vhost``.

    Missing parts come from ``settings``. Raises :class:`PeerAddressError`.
    """
    text = str(entry).strip()
    if not text:
        raise PeerAddressError("empty peer address")
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme not in ("amqp", "amqps") or not parsed.hostname:
            raise PeerAddressError(f"not an amqp:// URL: {mask_url(text)}")
        try:
            port = parsed.port or settings.rabbit_port
        except ValueError:
            raise PeerAddressError(f"bad port in {mask_url(text)}") from None
        vhost = urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else settings.rabbit_vhost
        user = urllib.parse.unquote(parsed.username) if parsed.username else settings.rabbit_user
        password = (Secret(urllib.parse.unquote(parsed.password)) if parsed.password is not None
                    else settings.rabbit_password)
        return BrokerAddress(parsed.hostname, port, vhost, user, password)
    host, port = text, settings.rabbit_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, raw_port = text.partition(":")
        port = _port(raw_port, text)
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise PeerAddressError(f"not a host, host:port or amqp:// URL: {text!r}")
    return BrokerAddress(host, port, settings.rabbit_vhost, settings.rabbit_user,
                         settings.rabbit_password)


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


def _canonical_ip(host: str) -> str:
    try:
        ip = str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except (OSError, UnicodeError):
        return host.lower()
    try:
        parsed = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if parsed.is_loopback or ip in local_addresses():
        return "local"
    return str(parsed)
