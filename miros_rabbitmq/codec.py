"""Wire-stable name of :func:`rebuild_event` (do not move or rename).

A pickled miros ``Event`` refers to the function that rebuilds it by module
path, ``miros_rabbitmq.codec.rebuild_event``: the path it had in 0.3.0. Nodes
of different versions read each other's events only while that path resolves,
so it stays here although the codec lives in :mod:`miros_rabbitmq.wire.codec`.
"""

from __future__ import annotations

from miros_rabbitmq.wire.codec import rebuild_event

__all__ = ["rebuild_event"]
