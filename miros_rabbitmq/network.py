"""The 0.2 import path: ``from miros_rabbitmq.network import NetworkedActiveObject``.

The classes live in :mod:`miros_rabbitmq.network`; this module keeps
code written for miros-rabbitmq 0.2 working unchanged.
"""

from __future__ import annotations

from miros_rabbitmq.mesh.networked import NetworkedActiveObject, NetworkedFactory

__all__ = ["NetworkedActiveObject", "NetworkedFactory"]
