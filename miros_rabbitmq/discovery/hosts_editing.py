"""Editing the manual hosts file safely (the library side of ``miros-rabbitmq hosts``).

The file (``.miros_rabbitmq_hosts.json``, ``{"hosts": ["192.168.1.75", ...]}``)
is shared by every node of a machine; it is changed under its OS lock and
written atomically, like a CacheFileChart's file, so concurrent edits all land
and a reader never sees half a file. Other keys of the document are kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from miros_rabbitmq.config import Secret, Settings
from miros_rabbitmq.discovery.hosts_file import read_hosts
from miros_rabbitmq.errors import ConfigurationError, Error

__all__ = ["HostsFileError", "add_hosts", "edit_hosts", "list_hosts", "remove_hosts",
           "validate_host"]


class HostsFileError(Error):
    """The hosts file cannot be read or changed (corrupt, locked, not writable)."""


def _store(path: str) -> Any:
    from miros_rabbitmq.cache.locked_json_file import LockedJsonFile

    return LockedJsonFile(path, {"hosts": []}, mode=0o600)


def _read(path: str) -> list[str]:
    """The hosts, by the one parser discovery uses (discovery.hosts_file)."""
    try:
        return read_hosts(path)
    except ConfigurationError as error:
        raise HostsFileError(f"{error}; fix or delete it") from None


def validate_host(entry: str) -> str:
    """``entry`` stripped, if it is a host, host:port or amqp(s) URL without credentials.

    Raises ConfigurationError saying why not.
    """
    from miros_rabbitmq.transport import parse_peer

    text = entry.strip()
    parse_peer(text, Settings("user", Secret("-"), (), (), ()))  # raises an Error subclass
    if "://" in text and "@" in text.split("://", 1)[1]:
        raise ConfigurationError("put credentials in .env, not in the hosts file "
                                 "(the file is shared)")
    return text


def edit_hosts(path: str, change: Callable[[list[str]], list[str]], *,
               timeout: float = 10.0) -> list[str]:
    """Read, change and atomically write the hosts file under its OS lock; the new list."""
    store = _store(path)
    try:
        with store.locked_for(timeout):
            current = _read(path)
            contents = store.read()
            hosts = change(current)
            document = dict(contents.dict) if not contents.repaired else {}
            document["hosts"] = hosts
            store.write(document)
            return hosts
    except TimeoutError:
        raise HostsFileError(f"{path} stays locked by another process "
                             f"(waited {timeout:g} s)") from None
    except OSError as error:
        raise HostsFileError(f"cannot update {path}: {error.strerror or error}") from None
    finally:
        store.close()


def add_hosts(path: str, entries: Iterable[str], *,
              timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """Add the entries not listed yet; ``(added, hosts now)``. Entries are validated first."""
    wanted = [validate_host(entry) for entry in entries]
    added: list[str] = []

    def change(current: list[str]) -> list[str]:
        for entry in wanted:
            if entry not in current and entry not in added:
                added.append(entry)
        return current + added

    return added, edit_hosts(path, change, timeout=timeout)


def remove_hosts(path: str, entries: Iterable[str], *,
                 timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """Remove the entries; ``(not listed, hosts now)``. No file: HostsFileError."""
    if not os.path.exists(path):
        raise HostsFileError(f"no hosts file at {path}")
    wanted = [entry.strip() for entry in entries]
    missing: list[str] = []

    def change(current: list[str]) -> list[str]:
        missing.extend(entry for entry in wanted if entry not in current)
        return [host for host in current if host not in wanted]

    return missing, edit_hosts(path, change, timeout=timeout)


def list_hosts(path: str, *, timeout: float = 10.0) -> list[str] | None:
    """The hosts listed (read under a shared lock); None when there is no file."""
    if not os.path.exists(path):
        return None
    store = _store(path)
    try:
        with store.locked_for(timeout, shared=True):
            return _read(path)
    except TimeoutError:
        raise HostsFileError(f"{path} stays locked by another process "
                             f"(waited {timeout:g} s)") from None
    except OSError as error:
        raise HostsFileError(f"cannot read {path}: {error.strerror or error}") from None
    finally:
        store.close()
