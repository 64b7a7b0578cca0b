"""The package surface: public names, version, compatibility import paths."""

from __future__ import annotations

import subprocess
import sys

import miros_rabbitmq


def test_every_public_name_resolves() -> None:
    for name in miros_rabbitmq.__all__:
        assert getattr(miros_rabbitmq, name) is not None, name
    assert set(miros_rabbitmq._LAZY) <= set(miros_rabbitmq.__all__)


def test_version_comes_from_package_metadata() -> None:
    assert miros_rabbitmq.__version__[0].isdigit()


def test_compatibility_import_paths_of_0_2() -> None:
    from miros_rabbitmq.cache import CacheFileChart
    from miros_rabbitmq.network import NetworkedActiveObject, NetworkedFactory

    assert CacheFileChart is miros_rabbitmq.CacheFileChart
    assert NetworkedActiveObject is miros_rabbitmq.NetworkedActiveObject
    assert NetworkedFactory is miros_rabbitmq.NetworkedFactory


def test_importing_the_package_does_not_load_the_amqp_client() -> None:
    code = "import sys, miros_rabbitmq; print('pika' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_library_never_configures_logging() -> None:
    code = ("import logging, miros_rabbitmq, miros_rabbitmq.network;"
            "print(len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
