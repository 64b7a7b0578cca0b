"""The local test broker, and ports nobody listens on (loopback only)."""

from __future__ import annotations

import os
import socket
import struct
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_TEST_URL",
    "REQUIRE_BROKER_ENV",
    "TEST_URL_ENV",
    "amqp_ping",
    "broker_answers",
    "closed_ports",
    "free_port",
    "local_broker_url",
    "masked_url",
    "url_parts",
]

DEFAULT_TEST_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
TEST_URL_ENV = "MIROS_RABBITMQ_TEST_URL"
#: set (to anything but "" or "0") to fail instead of skip when the broker is down
REQUIRE_BROKER_ENV = "MIROS_RABBITMQ_REQUIRE_BROKER"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def closed_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nobody listens on (the kernel handed them out and took them back)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sockets.append(sock)
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def _amqp_ping(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(_AMQP_HEADER)
            data = b""
            while len(data) < 11:
                chunk = s.recv(11 - len(data))
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    frame_type, channel, _size, class_id, method_id = struct.unpack("!BHIHH", data)
    return frame_type == 1 and channel == 0 and (class_id, method_id) == (10, 10)


def amqp_ping(host: str, port: int = 5672, timeout: float = 1.0) -> bool:
    """True when an AMQP 0-9-1 broker answers at host:port with ``connection.start``."""
    return _amqp_ping(host, port, timeout)


def broker_answers(url: str, timeout: float = 1.0) -> bool:
    """``amqp_ping`` for an ``amqp://`` URL."""
    parts = urlsplit(url)
    return amqp_ping(parts.hostname or "127.0.0.1", parts.port or 5672, timeout)




def url_parts(url: str) -> tuple[str, int, str, str]:
    """(host, port, user, password) of an ``amqp://`` URL, with guest defaults."""
    parts = urlsplit(url)
    return (
        parts.hostname or "127.0.0.1",
        parts.port or 5672,
        unquote(parts.username or "guest"),
        unquote(parts.password or "guest"),
    )


def local_broker_url() -> str:
    """The local broker URL the tests use (``MIROS_RABBITMQ_TEST_URL`` or the default)."""
    return os.environ.get(TEST_URL_ENV) or DEFAULT_TEST_URL


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``******`` (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":******@", 1)
    return parts._replace(netloc=netloc).geturl()
