"""Settings from arguments, the environment and a ``.env`` file (python-dotenv).

Precedence: an explicit constructor argument, then the process environment,
then the first ``.env`` found in the working directory or one of its parents.
Secret values are wrapped in :class:`Secret` so that no ``repr``, log line or
exception text can show them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dotenv import dotenv_values, find_dotenv

from miros_rabbitmq.errors import ConfigurationError, EnvContractBroken
from miros_rabbitmq.wire.names import (
    DEFAULT_CONNECTION_ATTEMPTS,
    DEFAULT_HEARTBEAT,
    DEFAULT_PORT,
)

__all__ = ["Secret", "Settings", "load_settings", "mask_url"]

logger = logging.getLogger(__name__)


class Secret:
    """A string that never shows itself in ``str``/``repr``; ``.reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value.decode() if isinstance(value, bytes) else str(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('******')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def mask_url(url: str) -> str:
    """Return an AMQP URL with its password replaced by ``******``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:******@{hostpart}"


def _keys(value: str | bytes | Secret | Sequence[str | bytes] | None) -> tuple[Secret, ...]:
    """Normalize one key or a list of keys (first encrypts, all decrypt)."""
    if value is None:
        return ()
    if isinstance(value, Secret):
        items: list[str | bytes] = [value.reveal()]
    elif isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        # several keys in one env var, comma separated, for key rotation
        items = [part for part in text.replace(" ", "").split(",") if part]
    else:
        items = list(value)
    return tuple(Secret(item) for item in items)


@dataclass(frozen=True)
class Settings:
    """Everything a node needs to reach brokers and open its networks."""

    rabbit_user: str
    rabbit_password: Secret = field(repr=True)
    mesh_keys: tuple[Secret, ...]
    snoop_trace_keys: tuple[Secret, ...]
    snoop_spy_keys: tuple[Secret, ...]
    rabbit_host: str = "127.0.0.1"
    rabbit_port: int = DEFAULT_PORT
    rabbit_vhost: str = "/"
    heartbeat: int = DEFAULT_HEARTBEAT
    connection_attempts: int = DEFAULT_CONNECTION_ATTEMPTS
    lan_discovery: bool = True


def _lookup(name: str, env: Mapping[str, str | None], dotenv: Mapping[str, str | None]) -> str | None:
    value = env.get(name)
    if value is None or value == "":
        value = dotenv.get(name)
    return value if value not in ("", None) else None


def _integer(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value}")
    return value


def _flag(raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off", "")


def load_settings(
    *,
    rabbit_user: str | None = None,
    rabbit_password: str | Secret | None = None,
    mesh_encryption_key: str | bytes | Sequence[str | bytes] | None = None,
    snoop_trace_encryption_key: str | bytes | Sequence[str | bytes] | None = None,
    snoop_spy_encryption_key: str | bytes | Sequence[str | bytes] | None = None,
    rabbit_host: str | None = None,
    rabbit_port: int | None = None,
    lan_discovery: bool | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | None = None,
    require_mesh_key: bool = True,
) -> Settings:
    """Build :class:`Settings`; raise :class:`EnvContractBroken` naming what is missing.

    The ``.env`` file is read but not copied into ``os.environ``: the library
    does not change its host process's environment. ``require_mesh_key=False``
    (a snoop listener): the mesh key may be missing when both snoop keys are
    set; ``mesh_keys`` is then empty.
    """
    env: Mapping[str, str | None] = os.environ if environ is None else environ
    path = dotenv_path if dotenv_path is not None else find_dotenv(usecwd=True)
    dotenv: Mapping[str, str | None] = dotenv_values(path) if path else {}

    user = rabbit_user or _lookup("RABBIT_USER", env, dotenv)
    if not user:
        raise EnvContractBroken("RABBIT_USER")
    if isinstance(rabbit_password, Secret):
        password = rabbit_password
    else:
        raw_password = rabbit_password or _lookup("RABBIT_PASSWORD", env, dotenv)
        if not raw_password:
            raise EnvContractBroken("RABBIT_PASSWORD")
        password = Secret(raw_password)

    mesh = _keys(mesh_encryption_key) or _keys(_lookup("MESH_ENCRYPTION_KEY", env, dotenv))
    trace = _keys(snoop_trace_encryption_key) or _keys(
        _lookup("SNOOP_TRACE_ENCRYPTION_KEY", env, dotenv)) or mesh
    spy = _keys(snoop_spy_encryption_key) or _keys(
        _lookup("SNOOP_SPY_ENCRYPTION_KEY", env, dotenv)) or mesh
    if not mesh and (require_mesh_key or not trace or not spy):
        missing = "SNOOP_TRACE_ENCRYPTION_KEY" if not require_mesh_key and not trace else (
            "SNOOP_SPY_ENCRYPTION_KEY" if not require_mesh_key and not spy
            else "MESH_ENCRYPTION_KEY")
        raise EnvContractBroken(missing, "make one with: miros-rabbitmq keygen")

    port = rabbit_port if rabbit_port is not None else _integer(
        "RABBIT_PORT", _lookup("RABBIT_PORT", env, dotenv), DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ConfigurationError(f"RABBIT_PORT must be in 1..65535, got {port}")
    return Settings(
        rabbit_user=user,
        rabbit_password=password,
        mesh_keys=mesh,
        snoop_trace_keys=trace,
        snoop_spy_keys=spy,
        rabbit_host=rabbit_host or _lookup("RABBIT_HOST", env, dotenv) or "127.0.0.1",
        rabbit_port=port,
        heartbeat=_integer("RABBIT_HEARTBEAT_INTERVAL",
                           _lookup("RABBIT_HEARTBEAT_INTERVAL", env, dotenv), DEFAULT_HEARTBEAT),
        connection_attempts=_integer("CONNECTION_ATTEMPTS", _lookup("CONNECTION_ATTEMPTS", env, dotenv),
                                     DEFAULT_CONNECTION_ATTEMPTS),
        lan_discovery=lan_discovery if lan_discovery is not None else _flag(
            _lookup("MIROS_RABBITMQ_LAN_DISCOVERY", env, dotenv), True),
    )
