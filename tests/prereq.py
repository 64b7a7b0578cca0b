"""What the suite needs from the machine, and what happens when it is missing.

Outside CI a test whose prerequisite is missing skips, saying what is missing.
Under CI (environment variable ``CI`` set) the same test FAILS with that
message: a CI run that silently skipped the restart, two-broker or LAN tests
would be green while testing nothing. ``make test`` (scripts/ensure_*.sh)
installs everything named here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import NoReturn

import pytest

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
SETUP_HINT = "`make test` (scripts/ensure_os_packages.sh, scripts/ensure_rabbitmq.sh) installs it"

_netns_reason: str | None = None
_netns_checked = False


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """A prerequisite is missing: fail under CI, skip elsewhere, naming it."""
    if in_ci():
        pytest.fail(f"prerequisite missing under CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        missing(f"root ({why}); run the tests as root")


def need_command(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}", f"/bin/{name}")
         if os.access(p, os.X_OK)), None)
    if path is None:
        missing(f"the {name} command (Debian package {package}); {SETUP_HINT}")
    return path


def need_rabbitmq_server() -> None:
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        missing(f"{RABBITMQ_SERVER} (Debian package rabbitmq-server) for the extra RabbitMQ "
                f"nodes; {SETUP_HINT}")


def netns_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    global _netns_reason, _netns_checked
    if _netns_checked:
        return _netns_reason
    _netns_checked = True
    if os.geteuid() != 0:
        _netns_reason = "root (network namespaces need CAP_SYS_ADMIN); run the tests as root"
    elif shutil.which("ip") is None and not os.access("/usr/sbin/ip", os.X_OK):
        _netns_reason = f"the ip command (Debian package iproute2); {SETUP_HINT}"
    else:
        probe = f"mrprobe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if added.returncode != 0:
            _netns_reason = f"a working `ip netns add` (it said: {added.stderr.strip()})"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return _netns_reason


def need_netns() -> None:
    reason = netns_unavailable()
    if reason:
        missing(reason)
