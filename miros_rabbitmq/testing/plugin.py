"""The pytest plugin (``pytest11`` entry point): fixtures for testing networked charts.

``rabbitmq_url`` (session)
    AMQP URL of the local broker (``MIROS_RABBITMQ_TEST_URL``, default
    ``amqp://guest:guest@127.0.0.1:5672/%2F``); the test is skipped, with the
    reason, when nothing answers there (fails instead when
    ``MIROS_RABBITMQ_REQUIRE_BROKER=1``).
``mesh_env``
    A fresh ``.env``-style environment (credentials, three Fernet keys, LAN
    discovery off) and a clean working folder.
``event_recorder``
    An :class:`~miros_rabbitmq.testing.EventRecorder` to wait on.
``no_thread_leaks``
    Fails the test if it leaves threads running (see
    :class:`~miros_rabbitmq.testing.ThreadWatcher`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from miros_rabbitmq.testing.env import MESH_ENV_CLEARED, mesh_environment
from miros_rabbitmq.testing.network import (
    REQUIRE_BROKER_ENV,
    TEST_URL_ENV,
    broker_answers,
    local_broker_url,
    masked_url,
)
from miros_rabbitmq.testing.threads import ThreadWatcher
from miros_rabbitmq.testing.waiting import EventRecorder

__all__ = ["event_recorder", "mesh_env", "no_thread_leaks", "rabbitmq_url"]

try:
    import pytest
except ImportError:  # importable without pytest (it only means something under pytest)
    pytest = None  # type: ignore[assignment]


if pytest is not None:

    @pytest.fixture(scope="session")
    def rabbitmq_url() -> str:
        """AMQP URL of the local broker; skips the test when nothing answers there."""
        url = local_broker_url()
        if not broker_answers(url, timeout=2.0):
            if os.environ.get(REQUIRE_BROKER_ENV, "") not in ("", "0"):
                pytest.fail(f"no AMQP broker answers at {masked_url(url)} and {REQUIRE_BROKER_ENV} is set")
            pytest.skip(
                f"no AMQP broker answers at {masked_url(url)} (set {TEST_URL_ENV} or start one)"
            )
        return url

    @pytest.fixture
    def mesh_env(tmp_path: Path, monkeypatch: Any) -> dict[str, str]:
        """Set the .env variables of a node (fresh keys, LAN discovery off) and chdir to tmp_path.

        Nothing from an outer ``.env``, hosts file or LAN cache is read: the test runs
        in an empty folder, and the variables of ``MESH_ENV_CLEARED`` are unset
        (``RABBIT_HOST`` is set only when ``MIROS_RABBITMQ_TEST_URL`` names another
        host). Returns the variables set.
        """
        for key in MESH_ENV_CLEARED:
            monkeypatch.delenv(key, raising=False)
        values = mesh_environment()
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        return values

    @pytest.fixture
    def event_recorder() -> EventRecorder:
        """A fresh :class:`EventRecorder`."""
        return EventRecorder()

    @pytest.fixture
    def no_thread_leaks() -> Iterator[ThreadWatcher]:
        """Fail the test if threads it started are still running 2 s after it ends."""
        watcher = ThreadWatcher()
        yield watcher
        watcher.check()
