"""Tests of ``python -m airflow_provider_pad.emulator`` run as a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

READY_TIMEOUT_SECONDS = 20
STOP_TIMEOUT_SECONDS = 10
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def start_cli(ready_file: Path) -> subprocess.Popen:
    """Start the emulator CLI on a free port and return once it has written ``ready_file``."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_pad.emulator",
            "--port",
            "0",
            "--queue-seconds",
            "0.1",
            "--run-seconds",
            "0.1",
            "--ready-file",
            str(ready_file),
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not ready_file.exists():
        if process.poll() is not None:
            pytest.fail(f"The emulator exited with {process.returncode}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"The emulator wrote no ready file within {READY_TIMEOUT_SECONDS} s.")
        time.sleep(0.05)
    return process


@pytest.fixture(scope="module")
def shared_cli(tmp_path_factory):
    """One CLI process for the tests that only read from it. Its stdout is read once, here."""
    ready_file = tmp_path_factory.mktemp("cli") / "ready.json"
    process = start_cli(ready_file)
    stdout_lines = [process.stdout.readline() for _ in range(3)]
    yield process, ready_file, stdout_lines
    stop(process)


@pytest.fixture
def cli(tmp_path):
    """A CLI process of its own, for tests that stop it."""
    ready_file = tmp_path / "ready.json"
    process = start_cli(ready_file)
    yield process, ready_file
    if process.poll() is None:
        process.kill()
        process.wait()


def stop(process: subprocess.Popen, signal_number: int = signal.SIGTERM) -> int:
    process.send_signal(signal_number)
    return process.wait(timeout=STOP_TIMEOUT_SECONDS)


def http_session(connection: dict) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = connection["extra"]["verify"]
    return session


def test_cli_prints_connection(shared_cli):
    _, ready_file, stdout_lines = shared_cli
    connection_line, export_line, ca_line = (line.rstrip("\n") for line in stdout_lines)
    name, _, quoted = connection_line.partition("=")
    assert name == "AIRFLOW_CONN_DATAVERSE_DEFAULT"
    assert shlex.split(quoted) == [ready_file.read_text()]
    assert export_line == "export AIRFLOW_CONN_DATAVERSE_DEFAULT"
    assert ca_line.startswith("# CA certificate: ")


def test_cli_output_is_shell(shared_cli):
    _, ready_file, stdout_lines = shared_cli
    script = "".join(stdout_lines) + 'printf %s "$AIRFLOW_CONN_DATAVERSE_DEFAULT"\n'
    completed = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10, env={})
    assert completed.stdout == ready_file.read_text()


def test_cli_serves_request_log(shared_cli):
    _, ready_file, _ = shared_cli
    connection = json.loads(ready_file.read_text())
    with http_session(connection) as session:
        session.post(f"{connection['host']}/_emulator/reset")
        token_response = session.post(
            f"{connection['extra']['authority']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": connection["login"],
                "client_secret": connection["password"],
                "scope": f"{connection['host']}/.default",
            },
        )
        token = token_response.json()["access_token"]
        whoami = session.get(f"{connection['host']}/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"})
        records = session.get(f"{connection['host']}/_emulator/requests").json()
        reset = session.post(f"{connection['host']}/_emulator/reset")
        records_after_reset = session.get(f"{connection['host']}/_emulator/requests").json()
    assert whoami.status_code == 200
    assert [record["endpoint"] for record in records] == ["token", "whoami"]
    assert reset.status_code == 204
    assert records_after_reset == []


def test_cli_sigterm_stops_cleanly(cli):
    process, ready_file = cli
    ca_path = json.loads(ready_file.read_text())["extra"]["verify"]
    assert stop(process) == 0
    assert not ready_file.exists()
    assert not os.path.exists(ca_path)


def test_cli_sigint_stops_cleanly(cli):
    process, _ = cli
    assert stop(process, signal.SIGINT) == 0


def test_cli_port_in_use(shared_cli):
    _, ready_file, _ = shared_cli
    port = json.loads(ready_file.read_text())["host"].rsplit(":", 1)[1]
    completed = subprocess.run(
        [sys.executable, "-m", "airflow_provider_pad.emulator", "--port", port],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 1
    assert "cannot listen" in completed.stderr
