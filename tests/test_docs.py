"""The documentation a user reads stays true.

* docs/charts.md (pictures of the library's statecharts) is what
  scripts/chart_pictures.py draws from today's chart definitions;
* the documentation site with the API reference (mkdocs + mkdocstrings,
  mkdocs.yml) builds with --strict: a reference to a name that moved or
  vanished, or a page missing from the nav, fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_process import REPO


def test_chart_pictures_are_not_stale() -> None:
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "chart_pictures.py"),
                           "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + " (run: python scripts/chart_pictures.py)"


def test_chart_pictures_show_the_seed_states() -> None:
    with open(os.path.join(REPO, "docs", "charts.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert text.count("```mermaid") == 6
    for line in ("state file_access_waiting {", "state file_accessed {",
                 "producer_thread_engaged --> producer_post_and_wait : try_to_connect_to_consumer",
                 "state recce {", "state post_to_queue {"):
        assert line in text, line


def test_api_reference_builds(tmp_path) -> None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.fail("the docs extra is not installed: pip install -e '.[docs]' "
                    "(scripts/bootstrap.sh installs it)", pytrace=False)
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", os.path.join(REPO, "mkdocs.yml"), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("NetworkedActiveObject", "NetworkedFactory", "CacheFileChart", "transmit",
                 "enable_snoop_trace", "EnvContractBroken", "load_settings"):
        assert name in api, name
    assert "positional order" in api
    for page in ("tutorial", "migrating", "logging", "charts"):
        assert (site / page / "index.html").exists(), page
