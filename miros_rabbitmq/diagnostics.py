"""Diagnostics: is this node set up right? (the library side of ``miros-rabbitmq doctor``).

:func:`probe_broker` connects to a broker and logs in; :func:`doctor_checks`
runs every check of the doctor (the .env and its mode, the settings, the
keys, the local broker, the hosts file, the LAN cache) and returns them as
:class:`Check` records, each with a plain-words fix. Secrets are shown
masked. Nothing here prints: the CLI renders the checks (text or JSON).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from dataclasses import asdict, dataclass
from typing import Any

from miros_rabbitmq.config import Secret, Settings, load_settings
from miros_rabbitmq.config import find_env_file as config_find_env_file
from miros_rabbitmq.errors import ConfigurationError, EnvContractBroken, Error
from miros_rabbitmq.wire.names import DEFAULT_HEARTBEAT, HOSTS_FILE, LAN_CACHE_FILE

__all__ = ["BrokerProbe", "Check", "doctor_checks", "find_env_file", "lan_cache_problem",
           "mask_keys", "probe_broker", "key_problems"]

KEY_VARIABLES = ("MESH_ENCRYPTION_KEY", "SNOOP_TRACE_ENCRYPTION_KEY", "SNOOP_SPY_ENCRYPTION_KEY")


def find_env_file(env_file: str | None) -> str | None:
    """The .env that load_settings would read (None when there is none)."""
    if env_file:
        return env_file if os.path.exists(env_file) else None
    return config_find_env_file()


def key_problems(settings: Settings, *, mesh: bool = True) -> list[tuple[str, str]]:
    """``(variable, reason)`` for each key setting that is not a usable Fernet key.

    ``mesh=False``: the mesh key is not checked (a snoop listener needs the snoop keys only).
    """
    from miros_rabbitmq.wire.codec import Codec

    problems = []
    for variable, keys in zip(KEY_VARIABLES, (settings.mesh_keys, settings.snoop_trace_keys,
                                              settings.snoop_spy_keys), strict=True):
        if variable == "MESH_ENCRYPTION_KEY" and not mesh:
            continue
        try:
            Codec(keys)
        except ConfigurationError as error:
            problems.append((variable, str(error)))
    return problems


@dataclass
class BrokerProbe:
    """What connecting to a broker told us."""

    ok: bool
    reachable: bool
    reason: str
    elapsed: float
    auth_refused: bool = False


def probe_broker(host: str, port: int, user: str, password: Secret, *, vhost: str = "/",
                 timeout: float = 5.0, tls: Any = None) -> BrokerProbe:
    """Can we reach the broker, and does it accept the credentials?

    A plain TCP connect first (a quick, clear answer for a closed port), then
    a real AMQP login through a private :class:`~miros_rabbitmq.transport.BrokerLink`.
    """
    from miros_rabbitmq.transport import BrokerAddress, BrokerLink

    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 3.0)):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return BrokerProbe(False, False, f"cannot connect to {host}:{port} ({reason})",
                           time.monotonic() - started)
    link = BrokerLink(BrokerAddress(host, port, vhost, user, password, tls),
                      heartbeat=DEFAULT_HEARTBEAT, max_buffer=16)
    try:
        deadline = started + timeout
        while not link.connected.wait(0.05):
            if link.last_error is not None or time.monotonic() >= deadline:
                break
        if link.connected.is_set():
            return BrokerProbe(True, True, f"{link.address.url} accepts user {user!r}",
                               time.monotonic() - started)
        reason = link.last_error or f"no AMQP answer within {timeout:.0f} s"
        return BrokerProbe(False, True, reason, time.monotonic() - started,
                           auth_refused=link.auth_failed.is_set())
    finally:
        link.close(flush_timeout=0, timeout=3.0)


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    status: str  # "ok", "warn", "fail"
    detail: str
    fix: str = ""


def _scout_check(settings: Settings) -> Check:
    """The scout account (docs/security.md): may scouts log in here and publish a challenge?"""
    from miros_rabbitmq.mesh.challenge import check_scout_account, scout_account_commands

    verdict, detail = check_scout_account(settings)
    if verdict is None:
        return Check("scout account", "warn", detail,
                     "unset MIROS_RABBITMQ_SCOUT_WITH_RABBIT_LOGIN and create the scout account "
                     "on every broker: " + scout_account_commands(settings.scout_user))
    if verdict:
        return Check("scout account", "ok", detail)
    return Check("scout account", "fail", detail, scout_account_commands(settings.scout_user))


def _is_fernet_key(key: Secret) -> bool:
    from miros_rabbitmq.wire.codec import Codec

    try:
        Codec([key])
    except ConfigurationError:
        return False
    return True


def mask_keys(keys: tuple[Secret, ...]) -> str:
    count = len(keys)
    return f"{count} key{'s' if count != 1 else ''} (******)"


def doctor_checks(env_file: str | None, *, hosts_file: str = HOSTS_FILE,
                  lan_cache_file: str = LAN_CACHE_FILE) -> list[Check]:
    """Every check of ``miros-rabbitmq doctor``, in order: .env, settings, keys, broker,
    hosts file, LAN cache. Never raises for a problem it finds: it becomes a Check."""
    from miros_rabbitmq.discovery.hosts_file import read_hosts
    from miros_rabbitmq.transport import parse_peer

    checks: list[Check] = []
    in_env = [name for name in ("RABBIT_USER", "RABBIT_PASSWORD", "MESH_ENCRYPTION_KEY")
              if os.environ.get(name)]
    path = find_env_file(env_file)
    if env_file and path is None:
        checks.append(Check(".env", "fail", f"{env_file} does not exist",
                            f"run `miros-rabbitmq init --path {env_file}`"))
    elif path is None and not in_env:
        checks.append(Check(".env", "fail",
                            f"no .env in {os.getcwd()} or its parents, and no RABBIT_USER/"
                            "RABBIT_PASSWORD/MESH_ENCRYPTION_KEY in the environment",
                            "run `miros-rabbitmq init` (writes a .env for the local broker)"))
    elif path is None:
        checks.append(Check(".env", "ok", "no .env; using the environment ("
                            + ", ".join(in_env) + ")"))
    else:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            checks.append(Check(".env", "warn", f"{path} is readable by others (mode {mode:04o})",
                                f"chmod 600 {path}"))
        else:
            checks.append(Check(".env", "ok", f"{path} (mode {mode:04o})"))
    settings: Settings | None = None
    try:
        settings = load_settings(dotenv_path=path if path else "")
    except EnvContractBroken as error:
        checks.append(Check("settings", "fail", f"{error.variable} is not set",
                            f"add {error.variable}=... to {path or '.env'}"
                            + (" (make a key with `miros-rabbitmq keygen`)"
                               if error.variable.endswith("KEY") else "")))
    except ConfigurationError as error:
        checks.append(Check("settings", "fail", str(error), f"correct it in {path or '.env'}"))
    else:
        checks.append(Check("settings", "ok",
                            f"RABBIT_USER={settings.rabbit_user} RABBIT_PASSWORD=****** "
                            f"broker {settings.rabbit_host}:{settings.rabbit_port}"))
        for variable, keys in (("MESH_ENCRYPTION_KEY", settings.mesh_keys),
                               ("SNOOP_TRACE_ENCRYPTION_KEY", settings.snoop_trace_keys),
                               ("SNOOP_SPY_ENCRYPTION_KEY", settings.snoop_spy_keys)):
            bad_keys = [index for index, key in enumerate(keys, 1) if not _is_fernet_key(key)]
            if bad_keys or not keys:
                checks.append(Check("keys", "fail", f"{variable}: encryption key "
                                    f"#{bad_keys[0] if bad_keys else 1} is not a Fernet key",
                                    f"replace {variable} with the output of "
                                    "`miros-rabbitmq keygen` (on every machine of the mesh)"))
            else:
                same = variable != "MESH_ENCRYPTION_KEY" and keys == settings.mesh_keys
                checks.append(Check("keys", "ok", f"{variable}: " + (
                    "defaults to the mesh key" if same else f"{mask_keys(keys)}, valid Fernet")))
    if settings is not None:
        tls = settings.tls_config if settings.rabbit_tls else None
        probe = probe_broker(settings.rabbit_host, settings.rabbit_port, settings.rabbit_user,
                             settings.rabbit_password, vhost=settings.rabbit_vhost, tls=tls)
        where = f"{settings.rabbit_host}:{settings.rabbit_port}"
        if probe.ok:
            checks.append(Check("broker", "ok", f"{probe.reason} ({probe.elapsed * 1000:.0f} ms)"))
        elif not probe.reachable:
            checks.append(Check("broker", "fail", f"broker unreachable: {probe.reason}",
                                "start RabbitMQ (e.g. `sudo systemctl start rabbitmq-server`) "
                                f"or set RABBIT_HOST/RABBIT_PORT (now {where})"))
        elif probe.auth_refused:
            checks.append(Check("broker", "fail",
                                f"wrong credentials: the broker at {where} refused user "
                                f"{settings.rabbit_user!r} with this password",
                                "correct RABBIT_USER/RABBIT_PASSWORD, or add the user: "
                                "`rabbitmqctl add_user USER PASSWORD && rabbitmqctl "
                                "set_permissions USER '.*' '.*' '.*'` (guest only logs in "
                                "from localhost)"))
        else:
            checks.append(Check("broker", "fail", f"broker at {where}: {probe.reason}",
                                "is it RabbitMQ (AMQP 0-9-1) on that port?"))
    if settings is not None and checks[-1].name == "broker" and checks[-1].status == "ok":
        checks.append(_scout_check(settings))  # a scout of a broker that answers
    hosts_path = hosts_file
    if not os.path.exists(hosts_path):
        checks.append(Check("hosts file", "ok", f"no {hosts_path} (optional: "
                            "`miros-rabbitmq hosts add HOST`)"))
    else:
        try:
            hosts = read_hosts(hosts_path)
        except ConfigurationError as error:
            checks.append(Check("hosts file", "fail", str(error),
                                f"fix the JSON, or delete {hosts_path} and use "
                                "`miros-rabbitmq hosts add HOST`"))
        else:
            dummy = Settings("user", Secret("-"), (), (), ())
            bad = []
            for host in hosts:
                try:
                    parse_peer(host, dummy)
                except Error:
                    bad.append(host)
            if bad:
                checks.append(Check("hosts file", "fail",
                                    f"{hosts_path}: not host, host:port or amqp:// URL: "
                                    + ", ".join(repr(b) for b in bad),
                                    "`miros-rabbitmq hosts remove` them"))
            else:
                checks.append(Check("hosts file", "ok", f"{hosts_path}: {len(hosts)} host(s)"))
    if os.path.exists(lan_cache_file):
        problem = lan_cache_problem(lan_cache_file)
        if problem:
            checks.append(Check("LAN cache", "warn", f"{lan_cache_file}: {problem}",
                                "delete it; it is rebuilt at the next LAN discovery"))
        else:
            checks.append(Check("LAN cache", "ok", f"{lan_cache_file}"))
    return checks


def lan_cache_problem(path: str) -> str | None:
    """Why the LAN cache file at ``path`` is unusable, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as error:
        return f"not valid JSON ({type(error).__name__})"
    if not isinstance(document, dict):
        return "not a JSON object"
    for key in ("addresses", "amqp_urls"):
        if not isinstance(document.get(key, []), list):
            return f"{key!r} is not a list"
    if not isinstance(document.get("time_out_in_minutes", 0), (int, float)):
        return "'time_out_in_minutes' is not a number"
    return None


def checks_as_json(checks: list[Check]) -> str:
    """The checks as one JSON document: ``{"ok": bool, "checks": [{name, status, detail, fix}]}``."""
    return json.dumps({"ok": not any(c.status == "fail" for c in checks),
                       "checks": [asdict(c) for c in checks]})
