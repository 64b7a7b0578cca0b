"""A ``.env``-free environment for a node under test."""

from __future__ import annotations

from miros_rabbitmq.testing.network import local_broker_url, url_parts

__all__ = ["MESH_ENV_CLEARED", "mesh_environment"]

#: variables of the outer environment that ``mesh_env`` removes so they cannot leak in
MESH_ENV_CLEARED = (
    "RABBIT_HOST",
    "RABBIT_HEARTBEAT_INTERVAL",
    "CONNECTION_ATTEMPTS",
    "MIROS_RABBITMQ_ENV_FILE",
)


def mesh_environment(port: int | None = None) -> dict[str, str]:
    """The variables ``mesh_env`` sets: the test broker's credentials, fresh Fernet
    keys, no LAN scan."""
    from cryptography.fernet import Fernet

    host, url_port, user, password = url_parts(local_broker_url())
    values = {
        "RABBIT_USER": user,
        "RABBIT_PASSWORD": password,
        "RABBIT_PORT": str(port or url_port),
        "MESH_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SNOOP_TRACE_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SNOOP_SPY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MIROS_RABBITMQ_LAN_DISCOVERY": "0",
    }
    if host not in ("127.0.0.1", "localhost"):
        values["RABBIT_HOST"] = host
    return values
