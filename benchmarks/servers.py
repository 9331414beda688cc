"""Start the two local API servers the trigger benchmark polls, start runs on them, and read their request logs.

The Dataverse emulator and the dbt Cloud stub each run in a process of their own on 127.0.0.1, so
their CPU time never counts against the trigger process being measured. Runs are started with
plain HTTPS requests, not through either provider, so changes to the providers' hooks do not
change how the runs are set up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

BENCHMARKS_DIRECTORY = Path(__file__).resolve().parent
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
HTTP_TIMEOUT_SECONDS = 60.0

# "Flow without outputs" among the emulator's default flows.
EMULATOR_FLOW_ID = "f0000000-0000-4000-8000-000000000004"
DBT_ACCOUNT_ID = 1
DBT_JOB_ID = 1


@dataclass
class StartedRuns:
    """Runs started for one measurement.

    ``sent_at`` maps each run id to the epoch time its start request was sent. The server creates
    the run after that, so ``sent_at + run_seconds`` is at most ``max_start_request_seconds``
    before the run's scheduled end, and a latency measured from it is an upper bound.
    """

    sent_at: dict[str, float]
    max_start_request_seconds: float


class ServerProcess:
    """A child process that writes a ready file once it serves, stopped with SIGTERM and then SIGKILL by pid."""

    def __init__(self, name: str, command: list[str], ready_file: Path, log_path: Path, environment: dict[str, str]) -> None:
        self.name = name
        self.ready_file = ready_file
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            # Not the repository: "python -m" puts the working directory first on sys.path.
            cwd=log_path.parent,
            start_new_session=True,
        )
        self.process = psutil.Process(self.popen.pid)
        self.ready = self._wait_until_ready()

    def _wait_until_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self.ready_file.exists():
            if self.popen.poll() is not None:
                raise RuntimeError(f"The {self.name} exited with code {self.popen.returncode}; its log is {self.log_path}.")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The {self.name} did not start within {READY_TIMEOUT_SECONDS:.0f} s; its log is {self.log_path}.")
            time.sleep(0.05)
        return json.loads(self.ready_file.read_text(encoding="utf-8"))

    def cpu_seconds(self) -> float:
        """Return the user and system CPU time the server process has used so far."""
        times = self.process.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_SECONDS)
        self._log.close()


def _https_session(ca_path: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_path
    return session


class EmulatorServer:
    """The Dataverse emulator (``python -m airflow_provider_pad.emulator``) in a child process."""

    status_endpoints = ("get_session", "list_sessions")

    def __init__(self, directory: Path, run_seconds: float, token_lifetime_seconds: int, environment: dict[str, str]) -> None:
        ready_file = directory / "emulator-ready.json"
        command = [
            sys.executable, "-m", "airflow_provider_pad.emulator",
            "--port", "0",
            "--ready-file", str(ready_file),
            "--queue-seconds", "0",
            "--run-seconds", str(run_seconds),
            "--token-lifetime", str(token_lifetime_seconds),
        ]
        self.server = ServerProcess("Dataverse emulator", command, ready_file, directory / "emulator.log", environment)
        self.connection = self.server.ready
        self.base_url = self.connection["host"]
        self.http = _https_session(self.connection["extra"]["verify"])

    def start_runs(self, count: int) -> StartedRuns:
        """Start ``count`` runs one after another, so each start time is known to within one request."""
        token = self._request_token()
        url = f"{self.base_url}/api/data/v9.2/workflows({EMULATOR_FLOW_ID})/Microsoft.Dynamics.CRM.RunDesktopFlow"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        body = {"runMode": "unattended", "connectionName": "benchmark", "connectionType": 1}
        sent_at: dict[str, float] = {}
        max_seconds = 0.0
        for _ in range(count):
            before = time.time()
            response = self.http.post(url, json=body, headers=headers, timeout=HTTP_TIMEOUT_SECONDS)
            response.raise_for_status()
            max_seconds = max(max_seconds, time.time() - before)
            sent_at[response.json()["flowsessionId"]] = before
        return StartedRuns(sent_at, max_seconds)

    def _request_token(self) -> str:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.connection["login"],
            "client_secret": self.connection["password"],
            "scope": f"{self.base_url}/.default",
        }
        url = f"{self.connection['extra']['authority']}/oauth2/v2.0/token"
        response = self.http.post(url, data=form, timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()["access_token"]

    def reset_log(self) -> None:
        self.http.post(f"{self.base_url}/_emulator/reset", timeout=HTTP_TIMEOUT_SECONDS).raise_for_status()

    def request_log(self) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.base_url}/_emulator/requests", timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()

    def watcher_environment(self) -> dict[str, str]:
        return {"AIRFLOW_CONN_DATAVERSE_DEFAULT": json.dumps(self.connection)}

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


class DbtCloudStubServer:
    """``dbt_cloud_stub.py`` in a child process."""

    status_endpoints = ("run_status",)

    def __init__(self, directory: Path, run_seconds: float, environment: dict[str, str]) -> None:
        ready_file = directory / "dbt-stub-ready.json"
        command = [
            sys.executable, str(BENCHMARKS_DIRECTORY / "dbt_cloud_stub.py"),
            "--run-seconds", str(run_seconds),
            "--ready-file", str(ready_file),
        ]
        self.server = ServerProcess("dbt Cloud stub", command, ready_file, directory / "dbt-stub.log", environment)
        ready = self.server.ready
        self.host = ready["host"]
        self.ca_path = ready["ca_path"]
        self.token = ready["token"]
        self.http = _https_session(self.ca_path)
        self.http.headers["Authorization"] = f"Token {self.token}"

    def start_runs(self, count: int) -> StartedRuns:
        url = f"https://{self.host}/api/v2/accounts/{DBT_ACCOUNT_ID}/jobs/{DBT_JOB_ID}/run/"
        sent_at: dict[str, float] = {}
        max_seconds = 0.0
        for _ in range(count):
            before = time.time()
            response = self.http.post(url, json={"cause": "benchmark"}, timeout=HTTP_TIMEOUT_SECONDS)
            response.raise_for_status()
            max_seconds = max(max_seconds, time.time() - before)
            sent_at[str(response.json()["data"]["id"])] = before
        return StartedRuns(sent_at, max_seconds)

    def reset_log(self) -> None:
        self.http.post(f"https://{self.host}/_stub/reset", timeout=HTTP_TIMEOUT_SECONDS).raise_for_status()

    def request_log(self) -> list[dict[str, Any]]:
        response = self.http.get(f"https://{self.host}/_stub/requests", timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()

    def watcher_environment(self) -> dict[str, str]:
        connection = {"conn_type": "dbt_cloud", "host": self.host, "login": str(DBT_ACCOUNT_ID), "password": self.token}
        # aiohttp, which the dbt Cloud hook uses, trusts what ssl.create_default_context() loads,
        # and OpenSSL reads SSL_CERT_FILE for that.
        return {"AIRFLOW_CONN_DBT_CLOUD_DEFAULT": json.dumps(connection), "SSL_CERT_FILE": self.ca_path}

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


def machine_busy_seconds() -> float:
    """Return the CPU seconds all cores have spent busy since boot, from the first line of /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def base_environment(airflow_home: Path) -> dict[str, str]:
    """Return the environment for a child process: a throwaway Airflow home and no proxy or CA overrides."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AIRFLOW") and name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and name not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    environment["AIRFLOW_HOME"] = str(airflow_home)
    environment["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return environment
