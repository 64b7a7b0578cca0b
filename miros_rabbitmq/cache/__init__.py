"""Compatibility import path of the seed: ``from miros_rabbitmq.cache import CacheFileChart``."""

from __future__ import annotations

from miros_rabbitmq.cache.cache_file_chart import CacheFileChart
from miros_rabbitmq.payloads import CacheReadPayload, CacheWritePayload

__all__ = ["CacheFileChart", "CacheReadPayload", "CacheWritePayload"]
