"""``miros-rabbitmq view``, ``list`` and ``snoop --record`` with real charts in real processes.

The browser test drives Debian's headless Chromium through Debian's chromedriver
(/usr/bin/chromedriver, never a downloaded one) with Selenium; it skips, saying
why, when they are not installed (scripts/ensure_os_packages.sh installs them).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from miros_rabbitmq.view.model import ViewModel
from miros_rabbitmq.view.record import read_record

pytestmark = pytest.mark.broker

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NODE = os.path.join(HERE, "view_node.py")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
URL = re.compile(r"(http://127\.0\.0\.1:\d+/\?token=\S+)")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Proc:
    """A child process whose output lines are collected by two threads."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, cwd=cwd, text=True,
                                        bufsize=1)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.out),
                                              (self.process.stderr, self.err))]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def has(self, needle: str, stream: str = "out") -> bool:
        return any(needle in line for line in list(getattr(self, stream)))

    def stop(self, how: str = "STOP", timeout: float = 15) -> int:
        if self.process.poll() is None:
            try:
                if how == "STOP":
                    self.send("STOP")
                elif how == "SIGINT":
                    self.process.send_signal(signal.SIGINT)
            except (BrokenPipeError, OSError):
                pass
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return code


def child_env(mesh_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(mesh_env)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    return env


@pytest.fixture
def ring(mesh_env: dict[str, str]) -> Iterator[dict[str, Proc]]:
    """Three charts a -> b -> c -> a, each in its own process, snoop trace on."""
    run = f"view{os.getpid()}{os.urandom(3).hex()}"
    env = child_env(mesh_env)
    nodes: dict[str, Proc] = {}
    try:
        for name, after in (("a", "c"), ("b", "a"), ("c", "b")):
            node = nodes[name] = Proc([sys.executable, NODE, name, "--run", run, "--after",
                                       after], env)
            wait_for(lambda n=node: n.has("@@READY") or n.process.poll() is not None, 30,
                     f"chart {name} to start")
            assert node.process.poll() is None, node.err
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def cli(args: list[str], mesh_env: dict[str, str], cwd: str) -> Proc:
    return Proc([sys.executable, "-m", "miros_rabbitmq", *args], child_env(mesh_env), cwd=cwd)


def start_view(args: list[str], mesh_env: dict[str, str], cwd: str) -> tuple[Proc, str]:
    view = cli(["view", *args], mesh_env, cwd)
    found = wait_for(lambda: next((URL.search(line) for line in view.out if URL.search(line)),
                                  None) or view.process.poll() is not None, 30,
                     "view to print its URL")
    assert view.process.poll() is None, view.err
    return view, found.group(1)


# --------------------------------------------------------------------------- list


def _listed(mesh_env: dict[str, str], cwd: str, *extra: str,
            meanwhile: Callable[[], Any] = lambda: None) -> dict[str, dict[str, Any]]:
    proc = cli(["list", "--json", "--wait", "3", *extra], mesh_env, cwd)
    wait_for(lambda: proc.has("listening", "err") or proc.process.poll() is not None, 30,
             "list to listen")
    meanwhile()
    assert proc.stop(how="wait", timeout=60) == 0, proc.err
    return {row["name"]: row for row in map(json.loads, proc.out)}


def test_list_shows_the_charts_alive_now(ring: dict[str, Proc], mesh_env, tmp_path) -> None:
    ring["a"].send("FLIP")
    rows = _listed(mesh_env, str(tmp_path))
    assert set(rows) == {"a", "b", "c"}
    for name, node in ring.items():
        assert rows[name]["pid"] == node.process.pid
        assert rows[name]["program"] == "view_node.py" and rows[name]["host"]
        assert rows[name]["status"] == "alive"
    assert (rows["a"]["state"], rows["b"]["state"]) == ("busy", "idle")
    rows = _listed(mesh_env, str(tmp_path), "--all", meanwhile=lambda: ring["c"].stop())
    assert rows["c"]["status"] == "stopped" and rows["a"]["status"] == "alive"
    assert "c" not in _listed(mesh_env, str(tmp_path))


# --------------------------------------------------------------------------- record


def links_of(model: ViewModel) -> collections.Counter[tuple[str, str, str]]:
    return collections.Counter(
        (link.signal, model.items[link.source].chart, model.items[link.target].chart)
        for link in model.links.values()
        if link.source in model.items and link.target in model.items)


RING_LINKS = collections.Counter({("relay", "a", "b"): 1, ("relay", "b", "c"): 1,
                                  ("relay", "c", "a"): 1})


def test_snoop_record_writes_what_view_replay_draws(ring: dict[str, Proc], mesh_env,
                                                    tmp_path) -> None:
    path = str(tmp_path / "run.jsonl")
    snoop = cli(["snoop", "--no-color", "--record", path], mesh_env, str(tmp_path))
    try:
        wait_for(lambda: snoop.has("snooping on", "err") or snoop.process.poll() is not None,
                 30, "snoop to listen")
        ring["a"].send("KICK 2")
        wait_for(lambda: snoop.has("[a] e->relay() busy->idle"), 20, "the relay to come round")
        wait_for(lambda: open(path).read().count('"SNOOP_PRESENCE"') >= 4, 20,
                 "presence lines in the record")
    finally:
        assert snoop.stop(how="SIGINT") == 0, snoop.err
    assert snoop.has("recorded", "err")
    assert not any("SNOOP_PRESENCE" in line or "=>" in line for line in snoop.out)
    model = ViewModel()
    for entry in read_record(path):
        model.feed(entry.signal, entry.payload, entry.t)
    assert links_of(model) == RING_LINKS
    assert {c.name: c.host != "" for c in model.charts.values()} == {
        "a": True, "b": True, "c": True}


# --------------------------------------------------------------------------- the browser


def _browser(tmp_path: Any) -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    from prereq import missing as prerequisite_missing

    if missing:
        prerequisite_missing(f"{', '.join(missing)} (scripts/ensure_os_packages.sh installs "
                             "Debian's chromium and chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        prerequisite_missing("selenium (the package's test extra: make venv)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1500,1000", f"--user-data-dir={tmp_path}/chromium"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _links(driver: Any) -> collections.Counter[tuple[str, str, str]]:
    return collections.Counter((link["sig"], link["from"], link["to"])
                               for link in driver.execute_script("return mirosView.links()")
                               if link["fromKind"] == "step" and link["toKind"] == "step")


def _state(driver: Any, name: str) -> str | None:
    """The state the chart table shows (read in one script: the page redraws often)."""
    return driver.execute_script(
        "const td = document.querySelector(`#charts tr[data-chart='${arguments[0]}'] td.state`);"
        "return td ? td.textContent : null;", name)


def test_the_page_shows_charts_states_arrows_chains_export_and_replay(
        ring: dict[str, Proc], mesh_env, tmp_path) -> None:
    driver = _browser(tmp_path)
    view, url = start_view(["--record-dir", str(tmp_path)], mesh_env, str(tmp_path))
    replay = None
    try:
        driver.get(url)
        wait_for(lambda: all(_state(driver, name) == "idle" for name in "abc"), 15,
                 "the three charts and their states on the page")
        row = driver.execute_script(
            "return document.querySelector(\"#charts tr[data-chart='b']\").textContent")
        assert "view_node.py" in row and str(ring["b"].process.pid) in row
        record = driver.execute_async_script(
            "mirosView.setRecording(true).then(arguments[0])")
        assert record["recording"] is True

        driver.execute_script("mirosView.delays(true)")
        ring["a"].send("FLIP")
        wait_for(lambda: _state(driver, "a") == "busy", 10, "a's new state on the page")
        # from miros's timestamp of the transition to the page drawing it
        delays = driver.execute_script("return mirosView.delays(true)")
        assert delays and max(delays) < 1.0, f"the transition took {delays} s to show"

        ring["a"].send("KICK 2")  # a -> b -> c -> a: a chain across three charts
        wait_for(lambda: _links(driver) == RING_LINKS, 15, "the three arrows")
        svg = driver.execute_async_script("mirosView.exportDiagram('svg').then(arguments[0])")
        assert svg.startswith("<svg") and "kick()" in svg and "relay()" in svg
        for name in "abc":
            assert f"Statechart: {name}" in svg
        assert svg.count('class="message"') == 3
        mermaid = driver.execute_async_script(
            "mirosView.exportDiagram('mermaid').then(arguments[0])")
        assert mermaid.startswith("sequenceDiagram") and mermaid.count("-->>") == 3

        # a click on c's relay transition highlights the chain a -> b -> c (and back to a)
        clicked = driver.execute_script(
            "const g = [...document.querySelectorAll('#diagram g.item.k-step')].find("
            "  (g) => g.dataset.chart === 'c' && g.textContent.includes('relay'));"
            "g.dispatchEvent(new MouseEvent('click', {bubbles: true})); return g.dataset.id;")
        assert clicked
        lit = wait_for(lambda: driver.execute_script("return mirosView.highlighted()")
                       if len(driver.execute_script("return mirosView.highlighted()")) > 6
                       else None, 5, "the causal chain highlighted")
        assert {h["chart"] for h in lit if h["chart"]} == {"a", "b", "c"}
        assert len([h for h in lit if h["link"]]) == 3
        driver.save_screenshot(str(tmp_path / "view.png"))
        keep = os.environ.get("MIROS_VIEW_SCREENSHOT")
        if keep:
            shutil.copy(tmp_path / "view.png", keep)
        live_links = _links(driver)

        stopped = driver.execute_async_script(
            "mirosView.setRecording(false).then(arguments[0])")
        assert stopped["recording"] is False and os.path.exists(stopped["path"])
        assert view.stop(how="SIGINT") == 0, view.err

        replay, replay_url = start_view(["--replay", stopped["path"], "--speed", "0"],
                                        mesh_env, str(tmp_path))
        driver.get(replay_url)
        wait_for(lambda: _links(driver) == live_links, 15, "the same arrows in the replay")
        # the table redraws on its own tick (at most ~12 a second): wait for it, as for the arrows
        wait_for(lambda: [_state(driver, name) for name in "abc"] == ["busy", "busy", "busy"],
                 10, "the replayed states in the chart table")
    finally:
        driver.quit()
        for proc in (view, replay):
            if proc is not None:
                proc.stop(how="SIGINT")
