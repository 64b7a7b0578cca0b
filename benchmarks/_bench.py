"""Shared by the benchmark scripts (not a benchmark itself: `make bench` skips `_*.py`)."""

from __future__ import annotations

import os

from cryptography.fernet import Fernet


def percentile(values: list[float], pct: float) -> float:
    """The value at ``pct`` percent of the sorted values (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def default_environment() -> None:
    """What a node needs from the environment, where it is not set: guest/guest on
    the local broker, a throwaway mesh key, no LAN scan."""
    os.environ.setdefault("RABBIT_USER", "guest")
    os.environ.setdefault("RABBIT_PASSWORD", "guest")
    os.environ.setdefault("MESH_ENCRYPTION_KEY", Fernet.generate_key().decode())
    os.environ.setdefault("MIROS_RABBITMQ_LAN_DISCOVERY", "0")
