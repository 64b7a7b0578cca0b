"""The ``miros-rabbitmq`` command line (click + rich).

Commands: ``keygen``, ``init``, ``doctor``, ``discover``, ``hosts add|remove|list``,
``snoop``, ``sequence`` and ``demo``. Every command has ``--help``; a failure
ends with a one-line reason on stderr and a non-zero exit code:

* 1 -- the command ran and found a problem (broker unreachable, credentials
  refused, file exists, corrupt file, events lost, ...);
* 2 -- the command line or the configuration is unusable (click's usage
  errors, a missing or malformed setting), or a feature is not available.

No command prints a secret: passwords and keys are shown masked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from miros_rabbitmq import __version__
from miros_rabbitmq.config import Secret, Settings, find_env_file, load_settings, mask_url
from miros_rabbitmq.errors import ConfigurationError, EnvContractBroken, Error
from miros_rabbitmq.terminal import printable
from miros_rabbitmq.wire.names import DEFAULT_HEARTBEAT, HOSTS_FILE, LAN_CACHE_FILE

__all__ = ["cli", "main", "CliError", "probe_broker", "BrokerProbe"]

logger = logging.getLogger(__name__)

EXIT_PROBLEM = 1
EXIT_UNUSABLE = 2


class CliError(click.ClickException):
    """A one-line reason and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def fail(message: str, exit_code: int = EXIT_PROBLEM) -> NoReturn:
    raise CliError(message, exit_code)


@dataclass
class Context:
    env_file: str | None
    console: Console
    err: Console


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- settings helpers


def _find_env_file(env_file: str | None) -> str | None:
    """The .env that load_settings would read (None when there is none)."""
    if env_file:
        return env_file if os.path.exists(env_file) else None
    return find_env_file()


def _load(ctx: Context, **overrides: Any) -> Settings:
    """Settings or a one-line reason (exit 2)."""
    if ctx.env_file and not os.path.exists(ctx.env_file):
        fail(f"{ctx.env_file} does not exist (make one with: miros-rabbitmq init)", EXIT_UNUSABLE)
    try:
        return load_settings(dotenv_path=ctx.env_file, **overrides)
    except (EnvContractBroken, ConfigurationError) as error:
        hint = "" if _find_env_file(ctx.env_file) else " (no .env found: run `miros-rabbitmq init`)"
        fail(f"{error}{hint}", EXIT_UNUSABLE)


def _check_keys(settings: Settings, *, mesh: bool = True) -> None:
    from miros_rabbitmq.wire.codec import Codec

    for variable, keys in (("MESH_ENCRYPTION_KEY", settings.mesh_keys),
                           ("SNOOP_TRACE_ENCRYPTION_KEY", settings.snoop_trace_keys),
                           ("SNOOP_SPY_ENCRYPTION_KEY", settings.snoop_spy_keys)):
        if variable == "MESH_ENCRYPTION_KEY" and not mesh:
            continue
        try:
            Codec(keys)
        except ConfigurationError as error:
            fail(f"{variable}: {error}", EXIT_UNUSABLE)


# --------------------------------------------------------------------------- broker probe


@dataclass
class BrokerProbe:
    """What connecting to a broker told us."""

    ok: bool
    reachable: bool
    reason: str
    elapsed: float
    auth_refused: bool = False


def _scout_check(settings: Settings) -> Any:
    """The scout account (docs/security.md): present, and able to log in here?"""
    if not settings.scout_user or settings.scout_password is None:
        how = "TLS" if settings.rabbit_tls else "RABBIT_USER's login in plain AMQP"
        return Check("scout account", "ok", f"none: scouts log in with {how} (set SCOUT_USER/"
                      "SCOUT_PASSWORD to keep RABBIT_PASSWORD from strangers; docs/security.md)")
    probe = probe_broker(settings.rabbit_host, settings.rabbit_port, settings.scout_user,
                         settings.scout_password, vhost=settings.rabbit_vhost,
                         tls=settings.tls_config if settings.rabbit_tls else None)
    if probe.ok:
        return Check("scout account", "ok", f"SCOUT_USER={settings.scout_user} logs in")
    return Check("scout account", "fail", f"SCOUT_USER={settings.scout_user}: {probe.reason}",
                 f"rabbitmqctl add_user {settings.scout_user} '<SCOUT_PASSWORD>' && rabbitmqctl "
                 f"set_permissions -p / {settings.scout_user} '^$' "
                 "'^miros\\.scout\\.exchange$' '^$'")


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
                      heartbeat=DEFAULT_HEARTBEAT,
                      max_buffer=16)
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


# --------------------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="miros-rabbitmq")
@click.option("--env-file", type=click.Path(dir_okay=False), envvar="MIROS_RABBITMQ_ENV_FILE",
              default=None, help="The .env to read (default: the first .env in this folder or "
              "a parent).")
@click.option("-v", "--verbose", count=True, help="Log what the library does (-vv: debug).")
@click.pass_context
def cli(click_ctx: click.Context, env_file: str | None, verbose: int) -> None:
    """Networked miros statecharts over RabbitMQ: set up, check, watch and draw."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    click_ctx.obj = Context(env_file=env_file, console=_console(), err=_console(stderr=True))


# --------------------------------------------------------------------------- keygen / init


@cli.command()
def keygen() -> None:
    """Print a new Fernet key (for MESH_/SNOOP_*_ENCRYPTION_KEY)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


ENV_TEMPLATE = """\
# miros-rabbitmq settings, written by `miros-rabbitmq init` ({when}).
# Keep this file private (mode 0600); copy the same keys to every machine of the mesh.
RABBIT_USER={user}
RABBIT_PASSWORD={password}
RABBIT_HOST={host}
RABBIT_PORT={port}
RABBIT_HEARTBEAT_INTERVAL=30
CONNECTION_ATTEMPTS=3
MESH_ENCRYPTION_KEY={mesh}
SNOOP_TRACE_ENCRYPTION_KEY={trace}
SNOOP_SPY_ENCRYPTION_KEY={spy}
{scout}"""

SCOUT_TEMPLATE = """\
# The scout account: scouts log in with it until a node proves our mesh key, so
# RABBIT_PASSWORD never goes to a stranger. Create it on every broker of the mesh:
#   rabbitmqctl add_user {user} '<SCOUT_PASSWORD below>'
#   rabbitmqctl set_permissions -p / {user} '^$' '^miros\\.scout\\.exchange$' '^$'
SCOUT_USER={quser}
SCOUT_PASSWORD={password}
"""


def env_quote(value: str) -> str:
    """``value`` single-quoted for a .env (python-dotenv reads it back literally)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _read_password(password: str | None, password_stdin: bool) -> str:
    """The password from stdin, a hidden prompt, or (discouraged) the command line."""
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("--password-stdin: nothing on stdin", EXIT_UNUSABLE)
        return line.rstrip("\r\n")
    if password is not None:
        click.echo("warning: --password is visible to other users (process list) and stays "
                   "in your shell history; prefer the prompt or --password-stdin", err=True)
        return password
    if sys.stdin.isatty():
        return str(click.prompt("RABBIT_PASSWORD", default="guest", hide_input=True,
                                confirmation_prompt=True, show_default=False, err=True))
    return "guest"


def write_private_file(path: str, text: str) -> None:
    """Write ``text`` atomically with mode 0600 (temp file in the same folder, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, temp = tempfile.mkstemp(prefix=".env.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


@cli.command()
@click.option("--path", "path", default=".env", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the file.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--user", default="guest", show_default=True, help="RABBIT_USER.")
@click.option("--password", default=None,
              help="RABBIT_PASSWORD (discouraged: visible in the process list and shell "
                   "history; without it you are asked, hidden; default guest).")
@click.option("--password-stdin", is_flag=True,
              help="Read RABBIT_PASSWORD from the first line of stdin.")
@click.option("--scout-account", "scout_user", default=None, metavar="USER",
              help="Also write SCOUT_USER=USER and a fresh SCOUT_PASSWORD (see docs/security.md).")
@click.option("--host", default="127.0.0.1", show_default=True, help="RABBIT_HOST.")
@click.option("--port", default=5672, show_default=True, type=click.IntRange(1, 65535),
              help="RABBIT_PORT.")
@click.pass_obj
def init(ctx: Context, path: str, force: bool, user: str, password: str | None,
         password_stdin: bool, scout_user: str | None, host: str, port: int) -> None:
    """Write a .env with fresh keys and the local broker's settings (mode 0600)."""
    import secrets

    from cryptography.fernet import Fernet

    if os.path.exists(path) and not force:
        fail(f"{path} already exists; use --force to overwrite it")
    if os.path.isdir(path):
        fail(f"{path} is a folder")
    password = _read_password(password, password_stdin)
    if any(c in value for value in (user, password, host, scout_user or "") for c in "\n\r"):
        fail("--user, --password and --host must be one line each", EXIT_UNUSABLE)
    scout = ""
    if scout_user:
        if not all(c.isalnum() or c in "._-" for c in scout_user):
            fail("--scout-account: letters, digits, '.', '_' and '-' only", EXIT_UNUSABLE)
        scout = SCOUT_TEMPLATE.format(user=scout_user, quser=env_quote(scout_user),
                                      password=env_quote(secrets.token_urlsafe(24)))
    text = ENV_TEMPLATE.format(
        when=time.strftime("%Y-%m-%d %H:%M:%S"), user=env_quote(user),
        password=env_quote(password), host=env_quote(host),
        port=port, mesh=Fernet.generate_key().decode(), trace=Fernet.generate_key().decode(),
        spy=Fernet.generate_key().decode(), scout=scout)
    try:
        write_private_file(path, text)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")
    click.echo(f"wrote {os.path.abspath(path)} (mode 0600, fresh keys; copy it to every "
               "machine of your mesh)")
    if scout_user:
        click.echo(f"create the scout account {scout_user} on every broker of the mesh: see "
                   f"the commands in {path} (docs/security.md)")


# --------------------------------------------------------------------------- demo


@cli.command()
@click.option("--laps", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Laps each ball makes round the ring.")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(2, 8),
              help="Charts (processes) in the ring.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(2, 600),
              help="Give up after this many seconds.")
@click.pass_obj
def demo(ctx: Context, laps: int, nodes: int, timeout: float) -> None:
    """Three networked charts in three processes relay balls over the local broker.

    Prints who got what from whom, then a summary; exit code 0 when every
    event arrived, 1 otherwise. Talks to 127.0.0.1 only and never scans a network.
    """
    from miros_rabbitmq.cli.demo import demo_settings, run_demo, summary_rows

    if ctx.env_file and not os.path.exists(ctx.env_file):
        fail(f"{ctx.env_file} does not exist (make one with: miros-rabbitmq init)", EXIT_UNUSABLE)
    try:
        settings, note = demo_settings(ctx.env_file)
    except (EnvContractBroken, ConfigurationError) as error:
        fail(str(error), EXIT_UNUSABLE)
    colours = ["cyan", "magenta", "yellow", "green", "blue", "red", "bright_cyan",
               "bright_magenta"]
    styles: dict[str, str] = {}

    def show(node: str, line: str) -> None:
        style = styles.setdefault(node, colours[len(styles) % len(colours)])
        ctx.console.print(Text(line, style=style))

    def info(line: str) -> None:
        ctx.err.print(Text(line, style="dim"))

    try:
        result = run_demo(nodes=nodes, laps=laps, timeout=timeout, settings=settings, note=note,
                          show=show, info=info)
    except Error as error:
        fail(str(error))
    table = Table(title="demo summary", title_justify="left")
    for column in ("chart", "sent", "received", "lost", "status"):
        table.add_column(column, justify="left" if column in ("chart", "status") else "right")
    for (name, sent, received, lost), report in zip(summary_rows(result), result.nodes, strict=True):
        table.add_row(name, str(sent), str(received), str(lost),
                      "ok" if report.finished and not report.problem else (report.problem or "?"))
    ctx.console.print(table)
    p50 = result.latency(0.5)
    p95 = result.latency(0.95)
    latency = (f"latency p50 {p50:.2f} ms, p95 {p95:.2f} ms" if p50 is not None and p95 is not None
               else "no latency measured")
    ctx.console.print(f"events sent {result.sent}, received {result.received}, "
                      f"lost {result.lost}; {latency}; {result.elapsed:.1f} s")
    if not result.ok:
        for report in result.nodes:
            if report.problem and report.problem.startswith("could not start"):
                fail(f"{report.name} {report.problem}")
        problems = [f"{n.name}: {n.problem}" for n in result.nodes if n.problem]
        fail(f"lost {result.lost} event(s)" + (f" ({problems[0]})" if problems else ""))


# --------------------------------------------------------------------------- doctor


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn", "fail"
    detail: str
    fix: str = ""


def _is_fernet_key(key: Secret) -> bool:
    from miros_rabbitmq.wire.codec import Codec

    try:
        Codec([key])
    except ConfigurationError:
        return False
    return True


def _mask_keys(keys: tuple[Secret, ...]) -> str:
    count = len(keys)
    return f"{count} key{'s' if count != 1 else ''} (******)"


def _doctor_checks(env_file: str | None) -> list[Check]:
    from miros_rabbitmq.discovery.hosts_file import read_hosts
    from miros_rabbitmq.transport import parse_peer

    checks: list[Check] = []
    in_env = [name for name in ("RABBIT_USER", "RABBIT_PASSWORD", "MESH_ENCRYPTION_KEY")
              if os.environ.get(name)]
    path = _find_env_file(env_file)
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
                    "defaults to the mesh key" if same else f"{_mask_keys(keys)}, valid Fernet")))
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
    if settings is not None:
        checks.append(_scout_check(settings))
    hosts_path = HOSTS_FILE
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
    if os.path.exists(LAN_CACHE_FILE):
        problem = _lan_cache_problem(LAN_CACHE_FILE)
        if problem:
            checks.append(Check("LAN cache", "warn", f"{LAN_CACHE_FILE}: {problem}",
                                "delete it; it is rebuilt at the next LAN discovery"))
        else:
            checks.append(Check("LAN cache", "ok", f"{LAN_CACHE_FILE}"))
    return checks


def _lan_cache_problem(path: str) -> str | None:
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


@cli.command()
@click.pass_obj
def doctor(ctx: Context) -> None:
    """Check the .env, the keys, the local broker and the hosts/cache files.

    Says in plain words what is wrong and how to fix it; exit code 1 when a
    check failed. Secrets are shown masked.
    """
    checks = _doctor_checks(ctx.env_file)
    marks = {"ok": ("[ ok ]", "green"), "warn": ("[warn]", "yellow"), "fail": ("[FAIL]", "red")}
    for check in checks:
        mark, style = marks[check.status]
        line = Text()
        line.append(mark, style=style)
        line.append(f" {check.name:<10} {check.detail}")
        ctx.console.print(line)
        if check.fix and check.status != "ok":
            ctx.console.print(Text(f"{'':17}fix: {check.fix}", style="dim"))
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        fail(f"{len(failed)} problem(s): {failed[0].detail}")
    ctx.console.print("all checks passed" if not any(c.status == "warn" for c in checks)
                      else "no problems (see the warnings above)")


# --------------------------------------------------------------------------- hosts


def _hosts_file(path: str) -> Any:
    try:
        from miros_rabbitmq.cache.locked_json_file import LockedJsonFile
    except ImportError:  # pragma: no cover - the module ships with the package
        fail("hosts editing is not available (miros_rabbitmq.cache.locked_json_file missing)",
             EXIT_UNUSABLE)
    return LockedJsonFile(path, {"hosts": []}, mode=0o600)


def _read_hosts(path: str) -> list[str]:
    from miros_rabbitmq.discovery.hosts_file import read_hosts

    try:
        return read_hosts(path)
    except ConfigurationError as error:
        fail(f"{error}; fix or delete it")


def _edit_hosts(path: str, timeout: float, change: Callable[[list[str]], list[str]]) -> list[str]:
    """Read, change and atomically write the hosts file under its OS lock."""
    store = _hosts_file(path)
    try:
        with store.locked_for(timeout):
            current = _read_hosts(path)  # the one parser: the rule discovery uses
            contents = store.read()
            hosts = change(current)
            document = dict(contents.dict) if not contents.repaired else {}
            document["hosts"] = hosts
            store.write(document)
            return hosts
    except TimeoutError:
        fail(f"{path} stays locked by another process (waited {timeout:g} s)")
    except OSError as error:
        fail(f"cannot update {path}: {error.strerror or error}")
    finally:
        store.close()


@cli.group()
@click.option("--file", "path", default=HOSTS_FILE, show_default=True,
              type=click.Path(dir_okay=False), help="The hosts file.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds to wait for the file's lock.")
@click.pass_context
def hosts(click_ctx: click.Context, path: str, timeout: float) -> None:
    """Edit the manual hosts file (locked and atomic, like CacheFileChart)."""
    click_ctx.meta["hosts.path"] = path
    click_ctx.meta["hosts.timeout"] = timeout


def _validate_host(entry: str) -> str:
    from miros_rabbitmq.transport import parse_peer

    text = entry.strip()
    try:
        parse_peer(text, Settings("user", Secret("-"), (), (), ()))
    except Error as error:
        fail(str(error), EXIT_UNUSABLE)
    if "://" in text and "@" in text.split("://", 1)[1]:
        fail("put credentials in .env, not in the hosts file (the file is shared)",
             EXIT_UNUSABLE)
    return text


@hosts.command("add")
@click.argument("entries", nargs=-1, required=True)
@click.pass_context
def hosts_add(click_ctx: click.Context, entries: tuple[str, ...]) -> None:
    """Add hosts (host, host:port or amqp://host:port)."""
    path, timeout = click_ctx.meta["hosts.path"], click_ctx.meta["hosts.timeout"]
    wanted = [_validate_host(entry) for entry in entries]
    added: list[str] = []

    def change(current: list[str]) -> list[str]:
        for entry in wanted:
            if entry not in current and entry not in added:
                added.append(entry)
        return current + added

    result = _edit_hosts(path, timeout, change)
    for entry in wanted:
        click.echo(f"{'added' if entry in added else 'already listed'}: {entry}")
    click.echo(f"{path}: {len(result)} host(s)", err=True)


@hosts.command("remove")
@click.argument("entries", nargs=-1, required=True)
@click.pass_context
def hosts_remove(click_ctx: click.Context, entries: tuple[str, ...]) -> None:
    """Remove hosts."""
    path, timeout = click_ctx.meta["hosts.path"], click_ctx.meta["hosts.timeout"]
    if not os.path.exists(path):
        fail(f"no hosts file at {path}")
    wanted = [entry.strip() for entry in entries]
    missing: list[str] = []

    def change(current: list[str]) -> list[str]:
        missing.extend(entry for entry in wanted if entry not in current)
        return [host for host in current if host not in wanted]

    result = _edit_hosts(path, timeout, change)
    for entry in wanted:
        if entry not in missing:
            click.echo(f"removed: {entry}")
    click.echo(f"{path}: {len(result)} host(s)", err=True)
    if missing:
        fail(f"not in {path}: {', '.join(missing)}")


@hosts.command("list")
@click.pass_context
def hosts_list(click_ctx: click.Context) -> None:
    """List the hosts, one per line."""
    path, timeout = click_ctx.meta["hosts.path"], click_ctx.meta["hosts.timeout"]
    if not os.path.exists(path):
        click.echo(f"no hosts file at {path}", err=True)
        return
    store = _hosts_file(path)
    try:
        with store.locked_for(timeout, shared=True):
            entries = _read_hosts(path)  # the one parser: the rule discovery uses
    except TimeoutError:
        fail(f"{path} stays locked by another process (waited {timeout:g} s)")
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror or error}")
    finally:
        store.close()
    for entry in entries:  # a shared file: no password shown, no control character obeyed
        click.echo(printable(mask_url(entry)))
    if not entries:
        click.echo(f"{path}: no hosts", err=True)


# --------------------------------------------------------------------------- snoop


@cli.command()
@click.option("--trace", "want_trace", is_flag=True, help="The snoop trace network.")
@click.option("--spy", "want_spy", is_flag=True, help="The snoop spy network.")
@click.option("--no-color", is_flag=True, help="Plain text (also when NO_COLOR is set).")
@click.option("--grep", "names", multiple=True, metavar="NAME",
              help="Only charts whose name contains NAME (repeatable).")
@click.option("--duration", type=click.FloatRange(0, None), default=None,
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--connect-timeout", default=5.0, show_default=True,
              type=click.FloatRange(0.1, 120), help="Seconds to wait for the broker.")
@click.option("--record", "record_file", type=click.Path(dir_okay=False), default=None,
              help="Also write everything seen, with timestamps, to this file "
              "(replay it with `miros-rabbitmq view --replay FILE`).")
@click.pass_obj
def snoop(ctx: Context, want_trace: bool, want_spy: bool, no_color: bool,
          names: tuple[str, ...], duration: float | None, connect_timeout: float,
          record_file: str | None) -> None:
    """Print the live trace/spy of every chart on the mesh (Ctrl-C to stop).

    Joins the snoop networks of the local broker without being a chart. With
    neither --trace nor --spy, both.
    """
    import signal
    import threading

    from miros_rabbitmq.mesh import snoop as snooping
    from miros_rabbitmq.transport import local_broker

    settings = _load(ctx, require_mesh_key=False)  # the snoop keys are enough
    _check_keys(settings, mesh=False)
    networks = [n for n, wanted in ((snooping.TRACE, want_trace), (snooping.SPY, want_spy))
                if wanted] or [snooping.TRACE, snooping.SPY]
    color = not no_color and not os.environ.get("NO_COLOR")
    recorder = _recorder(record_file)
    address = local_broker(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    listeners = [snooping.SnoopListener(
        address, network,
        settings.snoop_trace_keys if network == snooping.TRACE else settings.snoop_spy_keys,
        color=color, heartbeat=settings.heartbeat, grep=names,
        tap=recorder.write if recorder is not None else None) for network in networks]
    try:
        for listener in listeners:
            listener.start(timeout=0)
        deadline = time.monotonic() + connect_timeout
        for listener in listeners:
            while not listener.ready.wait(0.05):
                link = listener.link
                error = link.last_error if link is not None else None
                if stop.is_set():
                    return
                refused = link is not None and link.auth_failed.is_set()
                if time.monotonic() >= deadline or refused:
                    fail(f"cannot listen at {address.url}: "
                         f"{error or f'no answer within {connect_timeout:g} s'}")
        what = " and ".join(n.replace("snoop_", "") for n in networks)
        click.echo(f"snooping on {what} at {address.url}"
                   + (f" (charts matching {', '.join(names)})" if names else "")
                   + (f" for {duration:g} s" if duration is not None else "; Ctrl-C to stop"),
                   err=True)
        stop.wait(duration)
    finally:
        for listener in listeners:
            listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if recorder is not None:
            recorder.close()
            click.echo(f"recorded {recorder.written} snoop message(s) to {record_file}", err=True)
    drops = sum(sum(listener.drops.counts.values()) for listener in listeners)
    if drops:
        click.echo(f"{drops} snoop message(s) could not be read (wrong key?)", err=True)


def _recorder(path: str | None) -> Any:
    """A :class:`~miros_rabbitmq.view.record.Recorder` for ``snoop --record`` (None: off)."""
    if path is None:
        return None
    from miros_rabbitmq.view.record import Recorder

    try:
        return Recorder(path)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")


# --------------------------------------------------------------------------- sequence


@cli.command()
@click.argument("logfile", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--svg", "svg_out", type=click.Path(dir_okay=False), help="Also write an SVG.")
@click.option("--mermaid", "mermaid_out", type=click.Path(dir_okay=False),
              help="Also write a Mermaid sequenceDiagram.")
@click.option("--chart", "charts", multiple=True, metavar="NAME",
              help="Only this chart (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the text diagram.")
def sequence(logfile: Any, svg_out: str | None, mermaid_out: str | None,
             charts: tuple[str, ...], quiet: bool) -> None:
    """Turn a snoop trace log into a sequence diagram across charts and machines.

    LOGFILE is what `miros-rabbitmq snoop --no-color` or a chart with snoop
    trace printed ('-' reads stdin); other lines are ignored. Steps are
    numbered in timestamp order across every chart.
    """
    from miros_rabbitmq.view.sequence import parse_log, render_mermaid, render_svg, render_text

    trace = parse_log(logfile, charts=charts)
    if not trace.items:
        fail(f"no trace lines in {logfile.name} (expected lines like "
             "' [+t] [2018-05-25 18:50:34.888810] [name] e->signal() source->target')")
    for out, render in ((svg_out, render_svg), (mermaid_out, render_mermaid)):
        if out:
            try:
                with open(out, "w", encoding="utf-8") as handle:
                    handle.write(render(trace))
            except OSError as error:
                fail(f"cannot write {out}: {error.strerror or error}")
            click.echo(f"wrote {out}", err=True)
    if not quiet:  # chart names come from the network: escaped, line by line
        click.echo("\n".join(printable(line) for line in render_text(trace).split("\n")),
                   nl=False)


# --------------------------------------------------------------------------- discover


@cli.command()
@click.option("--network", "network", metavar="CIDR",
              help="Scout every address of this network (e.g. 192.168.1.0/24).")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Scout the hosts of this hosts file.")
@click.option("--timeout", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds an address has to answer.")
@click.pass_obj
def discover(ctx: Context, network: str | None, hosts_file: str | None, timeout: float) -> None:
    """Scout for nodes of this mesh once and print a table of peers.

    A peer is found when a broker there accepts our credentials AND a node
    there proves it holds our mesh key. Without --network/--hosts: the LAN
    (this host's subnets, as LanRecceChart scans them), unless
    MIROS_RABBITMQ_LAN_DISCOVERY=0, then the hosts file in this folder.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from miros_rabbitmq.discovery.discovery import discover_once

    settings = _load(ctx)
    _check_keys(settings)
    if not network and not hosts_file and not settings.lan_discovery:
        if not os.path.exists(HOSTS_FILE):
            fail("LAN discovery is off (MIROS_RABBITMQ_LAN_DISCOVERY=0) and there is no "
                 f"{HOSTS_FILE}: give --network CIDR or --hosts FILE", EXIT_UNUSABLE)
        hosts_file = HOSTS_FILE
    with Progress(TextColumn("scouting"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), console=ctx.err, transient=True) as bar:
        task = bar.add_task("scout", total=None, last="")
        try:
            reports = discover_once(
                network=network, hosts_file=hosts_file, timeout=timeout, settings=settings,
                progress=lambda report: bar.update(task, advance=1,
                                                   last=printable(mask_url(report.address))))
        except ConfigurationError as error:
            fail(str(error), EXIT_UNUSABLE)
    if not reports:
        fail("nothing to scout (no addresses found)")
    table = Table(title=f"peers ({sum(r.found for r in reports)} of {len(reports)} found)",
                  title_justify="left")
    table.add_column("address")
    table.add_column("state")
    table.add_column("answer in", justify="right")
    for report in reports:
        # a URL's password is never shown; texts from the network are escaped
        state = Text("mesh node (key proven)", style="green") if report.found else Text(
            printable(f"{report.state}: {report.reason or 'no answer'}"), style="dim")
        table.add_row(Text(printable(mask_url(report.address))), state,
                      f"{report.elapsed * 1000:.0f} ms")
    ctx.console.print(table)


# --------------------------------------------------------------------------- entry point


def main(argv: Iterable[str] | None = None) -> None:
    """Console entry point (``miros-rabbitmq``, ``python -m miros_rabbitmq``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="miros-rabbitmq")



# --------------------------------------------------------------------------- more commands

from miros_rabbitmq.cli.list import list_charts  # noqa: E402
from miros_rabbitmq.cli.view import view  # noqa: E402

globals().pop("list", None)  # the submodule cli/list.py must not shadow the builtin here
cli.add_command(list_charts)
cli.add_command(view)
