"""Settings from arguments, the environment and a ``.env`` file (python-dotenv).

Precedence: an explicit constructor argument, then the process environment,
then the nearest ``.env`` upward from the working directory (the working
directory first, then each parent). Only a regular file (or a symlink to one)
counts as a ``.env``: a FIFO, a device or a folder named ``.env`` is skipped,
so start-up never blocks on it. Values are read literally: ``${VAR}`` is not
expanded (a secret never comes from another variable by accident).
Secret values are wrapped in :class:`Secret` so that no ``repr``, log line or
exception text can show them.
"""

from __future__ import annotations

import io
import logging
import os
import ssl
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from miros_rabbitmq.errors import ConfigurationError, EnvContractBroken
from miros_rabbitmq.wire.names import (
    DEFAULT_CONNECTION_ATTEMPTS,
    DEFAULT_HEARTBEAT,
    DEFAULT_PORT,
    DEFAULT_SCOUT_PASSWORD,
    DEFAULT_SCOUT_USER,
    DEFAULT_TLS_PORT,
)

__all__ = ["Secret", "Settings", "TlsConfig", "find_env_file", "load_settings", "mask_url",
           "read_env_file"]

logger = logging.getLogger(__name__)

ENV_FILE_MAX_BYTES = 1 << 20  # a .env is a few lines; anything bigger is not one
#: the opt-out: scouts log in with RABBIT_USER's login, as 0.2 did (unsafe on an untrusted LAN)
SCOUT_WITH_RABBIT_LOGIN = "MIROS_RABBITMQ_SCOUT_WITH_RABBIT_LOGIN"


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


@dataclass(frozen=True)
class TlsConfig:
    """How to make a TLS connection: the CA that signs the brokers' certificates
    (None: the system's CAs), an optional client certificate and key, and
    whether the certificate must also name the host (``check_hostname``).
    The server's certificate is always verified: there is no "TLS without
    verification" mode, which would let anyone in the middle read the login."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """A client SSLContext (raises ConfigurationError for unreadable files)."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.check_hostname = self.check_hostname
            context.verify_mode = ssl.CERT_REQUIRED
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file or None)
        except (OSError, ssl.SSLError) as error:
            raise ConfigurationError(f"TLS files: {error}") from None
        return context


def find_env_file(start: str | os.PathLike[str] | None = None) -> str | None:
    """The nearest regular file named ``.env`` from ``start`` (default: the
    working directory) upward, or None. Anything else named ``.env`` (a FIFO,
    a folder, a device) is skipped: reading it could block start-up."""
    folder = Path(start if start is not None else os.getcwd()).absolute()
    for candidate in (folder, *folder.parents):
        path = candidate / ".env"
        try:
            if stat.S_ISREG(os.stat(path).st_mode):
                return str(path)
        except OSError:
            continue
    return None


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """The values of a ``.env`` file, literally (no ``${VAR}`` expansion).

    Opened without blocking and checked again after opening (the file may
    have been swapped for a FIFO since it was found). A missing file has no
    values; anything else that is not a readable regular file raises
    ConfigurationError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return {}  # as python-dotenv: no file, no values
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigurationError(f"{path} is not a regular file")
        data = handle.read(ENV_FILE_MAX_BYTES + 1)
    if len(data) > ENV_FILE_MAX_BYTES:
        raise ConfigurationError(f"{path} is larger than {ENV_FILE_MAX_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))


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
    #: cluster mode: the cluster's node URLs (RABBIT_CLUSTER); empty = mesh mode.
    #: Not in the repr: a URL may carry a password.
    rabbit_cluster: tuple[str, ...] = field(default=(), repr=False)
    #: TLS to the local broker (``RABBIT_TLS``); ``tls_config`` also serves amqps:// peers
    rabbit_tls: bool = False
    tls_config: TlsConfig = field(default_factory=TlsConfig)
    #: the low-privilege account scouts log in with (``SCOUT_USER`` / ``SCOUT_PASSWORD``;
    #: default the well-known ``miros_scout`` account, see docs/security.md)
    scout_user: str = DEFAULT_SCOUT_USER
    scout_password: Secret = field(default_factory=lambda: Secret(DEFAULT_SCOUT_PASSWORD))
    #: ``MIROS_RABBITMQ_SCOUT_WITH_RABBIT_LOGIN=1``: scouts log in with ``rabbit_user``
    #: as 0.2 did (the real login goes to every neighbour: unsafe on an untrusted LAN)
    scout_with_rabbit_login: bool = False


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
    rabbit_cluster: Sequence[str] | None = None,
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
    path = dotenv_path if dotenv_path is not None else find_env_file()
    dotenv: Mapping[str, str | None] = read_env_file(path) if path else {}

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

    tls = _flag(_lookup("RABBIT_TLS", env, dotenv), False)
    tls_config = TlsConfig(
        ca_file=_lookup("RABBIT_CA_FILE", env, dotenv),
        cert_file=_lookup("RABBIT_CERT_FILE", env, dotenv),
        key_file=_lookup("RABBIT_KEY_FILE", env, dotenv),
        check_hostname=_flag(_lookup("RABBIT_TLS_CHECK_HOSTNAME", env, dotenv), True))
    scout_user = _lookup("SCOUT_USER", env, dotenv)
    raw_scout_password = _lookup("SCOUT_PASSWORD", env, dotenv)
    if scout_user and not raw_scout_password:
        raise EnvContractBroken("SCOUT_PASSWORD", "SCOUT_USER is set")
    with_rabbit_login = _flag(_lookup(SCOUT_WITH_RABBIT_LOGIN, env, dotenv), False)
    if with_rabbit_login and (scout_user or raw_scout_password):
        raise ConfigurationError(f"{SCOUT_WITH_RABBIT_LOGIN}=1 and SCOUT_USER/SCOUT_PASSWORD "
                                 "contradict each other: keep one")
    port = rabbit_port if rabbit_port is not None else _integer(
        "RABBIT_PORT", _lookup("RABBIT_PORT", env, dotenv),
        DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
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
        rabbit_cluster=_cluster(rabbit_cluster, _lookup("RABBIT_CLUSTER", env, dotenv)),
        rabbit_tls=tls,
        tls_config=tls_config,
        scout_user=scout_user or DEFAULT_SCOUT_USER,
        scout_password=Secret(raw_scout_password or DEFAULT_SCOUT_PASSWORD),
        scout_with_rabbit_login=with_rabbit_login,
    )


def _cluster(given: Sequence[str] | None, raw: str | None) -> tuple[str, ...]:
    """``brokers=[...]`` wins over ``RABBIT_CLUSTER=amqp://n1,amqps://n2:5671,...``."""
    if given is not None:
        if isinstance(given, str):
            raise ConfigurationError("brokers= takes a list of broker URLs, not one string")
        entries = [str(item).strip() for item in given]
    else:
        entries = [item.strip() for item in (raw or "").split(",")]
    return tuple(item for item in entries if item)
