"""The wheel a user installs: built with ``python -m build``, installed in a fresh venv.

Every module of the source tree must import from the installed wheel (a
subpackage left out of the wheel fails here), and the console script runs.
Needs PyPI (or a pip cache) for the dependencies, as a user's install does,
and the local broker for the demo the installed command runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv

import pytest
from cli_process import REPO, SETTING_VARIABLES

from miros_rabbitmq import __version__


def source_modules() -> list[str]:
    names = []
    root = os.path.join(REPO, "miros_rabbitmq")
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        package = os.path.relpath(folder, REPO).replace(os.sep, ".")
        for file in files:
            if file.endswith(".py"):
                stem = file[:-3]
                names.append(package if stem == "__init__" else f"{package}.{stem}")
    return sorted(names)


@pytest.mark.slow
@pytest.mark.broker
def test_wheel_installs_in_a_fresh_venv_with_every_module(tmp_path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist),
                            REPO], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list(dist.glob("miros_rabbitmq-*.whl"))
    assert len(wheels) == 1 and f"-{__version__}-" in wheels[0].name, wheels
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", str(wheels[0])],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "VIRTUAL_ENV", *SETTING_VARIABLES)}
    modules = source_modules()
    check = ("import importlib, os, sys\n"
             f"site = {str(env_dir)!r}\n"
             "for name in sys.argv[1:]:\n"
             "    module = importlib.import_module(name)\n"
             "    assert os.path.realpath(module.__file__).startswith(os.path.realpath(site)), "
             "(name, module.__file__)\n"
             "print('imported', len(sys.argv) - 1)\n")
    imported = subprocess.run([python, "-c", check, *modules], cwd=str(tmp_path), env=clean,
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.strip() == f"imported {len(modules)}"
    version = subprocess.run([str(env_dir / "bin" / "miros-rabbitmq"), "--version"],
                             cwd=str(tmp_path), env=clean, capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and __version__ in version.stdout, version
    licence = subprocess.run([python, "-c", "from importlib.metadata import metadata; "
                              "m = metadata('miros-rabbitmq'); print(m['License']); "
                              "print(m.get_all('Classifier'))"],
                             cwd=str(tmp_path), env=clean, capture_output=True, text=True)
    assert "MIT" in licence.stdout and "Python :: 3.11" in licence.stdout
    # the demo runs from the installed wheel (charts in child processes, local broker)
    demo = subprocess.run([str(env_dir / "bin" / "miros-rabbitmq"), "demo", "--laps", "1",
                           "--nodes", "2"], cwd=str(tmp_path), env=clean, capture_output=True,
                          text=True, timeout=120)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "lost 0" in demo.stdout
