"""Test helpers for code built on miros_rabbitmq.

Installed with the package; pytest loads :mod:`miros_rabbitmq.testing.plugin`
through the ``pytest11`` entry point, so a project that depends on
``miros-rabbitmq`` gets its fixtures (``rabbitmq_url``, ``mesh_env``,
``event_recorder``, ``no_thread_leaks``) without a line of set-up.

The helpers below import nothing but the standard library (miros and
cryptography when used), so ``import miros_rabbitmq.testing`` works where
pytest is not installed:

* :func:`wait_for` — poll a condition with a timeout;
* :class:`EventRecorder` — a thread-safe list to wait on (``wait_for_count``,
  ``wait_until``, ``wait_for_event``), and :func:`recording_state`, a miros
  state that records the events a chart receives;
* :func:`mesh_environment` — fresh keys and the test broker's credentials;
* :func:`free_port`, :func:`closed_ports`, :func:`amqp_ping`,
  :func:`broker_answers`, :func:`local_broker_url`, :func:`masked_url`;
* :class:`ThreadWatcher` — which threads a test left running.

Nothing here needs root, starts brokers or touches network namespaces.
"""

from __future__ import annotations

from miros_rabbitmq.testing.env import MESH_ENV_CLEARED, mesh_environment
from miros_rabbitmq.testing.network import (
    DEFAULT_TEST_URL,
    REQUIRE_BROKER_ENV,
    TEST_URL_ENV,
    amqp_ping,
    broker_answers,
    closed_ports,
    free_port,
    local_broker_url,
    masked_url,
    url_parts,
)
from miros_rabbitmq.testing.threads import PERSISTENT_THREAD_PATTERNS, ThreadWatcher
from miros_rabbitmq.testing.waiting import EventRecorder, recording_state, wait_for

__all__ = [
    "DEFAULT_TEST_URL",
    "EventRecorder",
    "MESH_ENV_CLEARED",
    "PERSISTENT_THREAD_PATTERNS",
    "REQUIRE_BROKER_ENV",
    "TEST_URL_ENV",
    "ThreadWatcher",
    "amqp_ping",
    "broker_answers",
    "closed_ports",
    "free_port",
    "local_broker_url",
    "masked_url",
    "mesh_environment",
    "recording_state",
    "url_parts",
    "wait_for",
]
