"""One hosts-file rule for every reader: the parser, ManNetChart, discover, doctor, hosts list."""

from __future__ import annotations

import json
import os

import pytest
from cli_process import clean_env, run_cli
from cryptography.fernet import Fernet

from miros_rabbitmq.config import load_settings
from miros_rabbitmq.discovery.discovery import discover_once
from miros_rabbitmq.discovery.hosts_file import read_hosts
from miros_rabbitmq.errors import ConfigurationError
from miros_rabbitmq.mesh.networked import read_hosts_file

NO_HOSTS = ["", "   \n", "{}", '{"hosts": []}', '{"hosts": ["", "  "]}']
NOT_A_HOSTS_FILE = ['{"hosts": [', "[]", '"10.0.0.1"', '{"hosts": "10.0.0.1"}',
                    '{"hosts": [1, 2]}']


def test_missing_file_means_no_hosts(tmp_path) -> None:
    assert read_hosts(str(tmp_path / "none.json")) == []


@pytest.mark.parametrize("text", NO_HOSTS)
def test_empty_documents_mean_no_hosts(tmp_path, text: str) -> None:
    path = tmp_path / "hosts.json"
    path.write_text(text)
    assert read_hosts(str(path)) == read_hosts_file(str(path)) == []


@pytest.mark.parametrize("text", NOT_A_HOSTS_FILE)
def test_anything_else_names_the_file(tmp_path, text: str) -> None:
    path = tmp_path / "hosts.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="hosts.json is not a hosts file: expected"):
        read_hosts(str(path))


def test_entries_are_stripped_and_deduplicated(tmp_path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"hosts": [" 10.0.0.1", "10.0.0.1", "b:5673", ""]}))
    assert read_hosts(str(path)) == ["10.0.0.1", "b:5673"]


def test_every_reader_agrees_on_an_empty_file(tmp_path) -> None:
    """The defect: doctor failed where discovery succeeded. Now all say "no hosts"."""
    path = tmp_path / ".miros_rabbitmq_hosts.json"
    path.write_text("")
    key = Fernet.generate_key().decode()
    settings = load_settings(rabbit_user="guest", rabbit_password="guest",
                             mesh_encryption_key=key, dotenv_path="/nonexistent/.env")
    assert discover_once(hosts_file=str(path), timeout=0.2, settings=settings) == []
    (tmp_path / ".env").write_text(f"RABBIT_USER=guest\nRABBIT_PASSWORD=guest\n"
                                   f"MESH_ENCRYPTION_KEY={key}\n")
    os.chmod(tmp_path / ".env", 0o600)
    env = clean_env()
    listed = run_cli(["hosts", "list"], str(tmp_path), env)
    assert listed.returncode == 0 and listed.stdout == ""
    doctor = run_cli(["doctor"], str(tmp_path), env)
    assert "[ ok ] hosts file" in doctor.stdout and "0 host(s)" in doctor.stdout
    added = run_cli(["hosts", "add", "10.0.0.9"], str(tmp_path), env)
    assert added.returncode == 0, added.stderr
    assert read_hosts(str(path)) == ["10.0.0.9"]
