"""The manual hosts file (``.miros_rabbitmq_hosts.json``): the one parser.

``{"hosts": ["192.168.1.75", "www.example.org", "10.0.0.2:5673"]}``

One rule for every reader (``ManNetChart``, ``discover --hosts``, ``doctor``,
``hosts list``): a missing file, an empty (or blank) file and an object
without ``"hosts"`` all mean "no hosts"; anything else that is not
``{"hosts": [str, ...]}`` is a :class:`~miros_rabbitmq.errors.ConfigurationError`
naming the file. Entries are stripped, blanks and repeats dropped, order kept.
"""

from __future__ import annotations

import json
from typing import Any

from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.wire.names import HOSTS_FILE

__all__ = ["HOSTS_FILE", "read_hosts", "hosts_of", "EXPECTED"]

EXPECTED = '{"hosts": ["192.168.1.75", ...]}'


def _not_a_hosts_file(path: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"{path} is not a hosts file: expected {EXPECTED} ({why})")


def hosts_of(document: Any, path: str = HOSTS_FILE) -> list[str]:
    """The hosts of a parsed hosts-file document (see the module's rule)."""
    if not isinstance(document, dict):
        raise _not_a_hosts_file(path, "not a JSON object")
    hosts = document.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise _not_a_hosts_file(path, '"hosts" is not a list of strings')
    return list(dict.fromkeys(h.strip() for h in hosts if h.strip()))


def read_hosts(path: str = HOSTS_FILE) -> list[str]:
    """The hosts of the file at ``path``; [] when there is none or it is empty.

    Raises :class:`~miros_rabbitmq.errors.ConfigurationError` for a file that
    cannot be read or is not a hosts file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    if not text.strip():
        return []
    try:
        document = json.loads(text)
    except ValueError:
        raise _not_a_hosts_file(path, "not valid JSON") from None
    return hosts_of(document, path)
