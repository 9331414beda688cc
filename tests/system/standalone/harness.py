"""Start, watch and stop the Dataverse emulator and the Airflow components as separate processes.

Everything listens on 127.0.0.1 only, on free ports. Each process is started in a process group of
its own, so that a test can signal one component (the triggerer, say) and the fixture can stop the
whole tree, task processes included, when the module ends or fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")

LOCALHOST = "127.0.0.1"
STOP_TIMEOUT_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.5
LOG_TAIL_LINES = 60
HTTP_TIMEOUT_SECONDS = 30.0

EMULATOR_START_TIMEOUT_SECONDS = 60.0
DB_MIGRATE_TIMEOUT_SECONDS = 300.0

# The log servers of the scheduler and triggerer listen on every interface, with no option for the
# address in Airflow 3.3.2. Without them the API server reads the task and trigger logs from files.
NO_LOG_SERVER = ["--skip-serve-logs"]

Value = TypeVar("Value")


class WaitTimeoutError(AssertionError):
    """A condition a test waits for did not hold before its deadline."""


def wait_until(
    condition: Callable[[], Value],
    timeout_seconds: float,
    description: str,
    details: Callable[[], str] | None = None,
) -> Value:
    """Call ``condition`` until it returns a truthy value, and return that value.

    :raises WaitTimeoutError: after ``timeout_seconds``. The message names ``description`` and adds
        ``details()``, such as log tails.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            message = f"Timed out after {timeout_seconds:.0f} s waiting for {description}."
            if details is not None:
                message += "\n" + details()
            raise WaitTimeoutError(message)
        time.sleep(POLL_INTERVAL_SECONDS)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now. Another process may still take it before the caller binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a text file, or a note when it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process in a new session (so a process group of its own), logging to one file."""

    def __init__(self, name: str, command: list[str], environment: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log_file = log_path.open("ab")
        self.popen = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def descendants(self) -> list[psutil.Process]:
        """Return the live processes below this one, however deep."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_group(self, signal_number: int) -> None:
        """Send a signal to every process in this process's group."""
        try:
            os.killpg(self.pid, signal_number)
        except ProcessLookupError:
            pass

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the process and everything below it: SIGTERM to the group, then SIGKILL to what is left.

        The task processes that Airflow starts put themselves in process groups of their own, so the
        descendants found before the SIGTERM are killed by pid as well.
        """
        known = self.descendants()
        if self.is_running():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        kill_processes(known)
        try:
            self.popen.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


def kill_processes(processes: Iterable[psutil.Process]) -> None:
    """Send SIGKILL to each process that still runs and wait for them. psutil checks that a pid was not reused."""
    processes = list(processes)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=STOP_TIMEOUT_SECONDS)


def command_line(process: psutil.Process) -> str:
    """Return a process's command line as one string, or "" once it has exited."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


# Dataverse emulator ----------------------------------------------------------------------------


class EmulatorProcess:
    """The Dataverse emulator served by ``python -m airflow_provider_pad.emulator`` in a child process.

    The request log comes from the emulator's admin routes. Run statuses come from the Web API
    itself, with a token from the emulator's identity endpoint, so reading them needs no code of
    the provider under test. Those reads show up in the request log as ``token`` and ``get_session``.
    """

    def __init__(self, directory: Path, queue_seconds: float, run_seconds: float) -> None:
        ready_file = directory / "emulator-connection.json"
        self.log_path = directory / "emulator.log"
        self.process = ManagedProcess(
            "emulator",
            [
                sys.executable,
                "-m",
                "airflow_provider_pad.emulator",
                "--port",
                "0",
                "--ready-file",
                str(ready_file),
                "--queue-seconds",
                str(queue_seconds),
                "--run-seconds",
                str(run_seconds),
            ],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
            self.log_path,
        )
        try:
            wait_until(
                lambda: ready_file.exists() or not self.process.is_running(),
                EMULATOR_START_TIMEOUT_SECONDS,
                "the Dataverse emulator to write its connection file",
                lambda: tail(self.log_path),
            )
            if not self.process.is_running():
                raise RuntimeError(f"The Dataverse emulator exited at start:\n{tail(self.log_path)}")
            self.connection_json = ready_file.read_text(encoding="utf-8")
        except BaseException:
            self.process.stop()
            raise

        connection = json.loads(self.connection_json)
        self.base_url: str = connection["host"]
        self._client_id: str = connection["login"]
        self._client_secret: str = connection["password"]
        self._authority: str = connection["extra"]["authority"]
        certificate_authority = ssl.create_default_context(cafile=connection["extra"]["verify"])
        self.client = httpx.Client(verify=certificate_authority, timeout=HTTP_TIMEOUT_SECONDS)
        self._access_token: str | None = None

    def stop(self) -> None:
        self.client.close()
        self.process.stop()

    # Request log

    def requests(self) -> list[dict[str, Any]]:
        """Return the request log, oldest first: method, path, query, status, endpoint and time."""
        response = self.client.get(f"{self.base_url}/_emulator/requests")
        response.raise_for_status()
        return response.json()

    def reset_log(self) -> None:
        self.client.post(f"{self.base_url}/_emulator/reset").raise_for_status()

    def requests_to(
        self, endpoints: str | Iterable[str], flow_session_id: str | None = None, since: float = 0.0
    ) -> list[dict[str, Any]]:
        """Return the logged requests to one or more endpoints, arrived at or after ``since`` (epoch seconds).

        With ``flow_session_id``, only requests whose path or query string names that flowsession count,
        so a status read through a ``flowsessions`` listing filtered on the id counts too.
        """
        names = {endpoints} if isinstance(endpoints, str) else set(endpoints)
        return [
            record
            for record in self.requests()
            if record["endpoint"] in names
            and (flow_session_id is None or flow_session_id.lower() in (record["path"] + record["query"]).lower())
            and record["time"] >= since
        ]

    def count(self, endpoints: str | Iterable[str], flow_session_id: str | None = None, since: float = 0.0) -> int:
        return len(self.requests_to(endpoints, flow_session_id, since))

    # Runs

    def run_status(self, flow_session_id: str) -> int:
        """Return the flowsession's ``statuscode`` (2 Running, 3 Waiting, 4 Succeeded, 7 Cancelled)."""
        url = f"{self.base_url}/api/data/v9.2/flowsessions({flow_session_id})"
        response = self.client.get(url, params={"$select": "statuscode"}, headers=self._authorization())
        if response.status_code == 401:
            self._access_token = None
            response = self.client.get(url, params={"$select": "statuscode"}, headers=self._authorization())
        response.raise_for_status()
        return int(response.json()["statuscode"])

    def _authorization(self) -> dict[str, str]:
        if self._access_token is None:
            response = self.client.post(
                f"{self._authority}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret,
                    "scope": f"{self.base_url}/.default",
                },
            )
            response.raise_for_status()
            self._access_token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._access_token}"}


# Airflow ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AirflowSettings:
    """What the components read from the environment: folders, ports and the Dataverse connection."""

    home: Path
    dags_folder: Path
    connection_json: str
    api_port: int
    worker_log_server_port: int
    trigger_log_server_port: int

    def environment(self) -> dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
        environment.update(
            {
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                # The LocalExecutor forks this many worker processes at start; the scenarios run one task at a time.
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW_CONN_DATAVERSE_DEFAULT": self.connection_json,
                "AIRFLOW__API__HOST": LOCALHOST,
                "AIRFLOW__API__PORT": str(self.api_port),
                # Workers and the triggerer reach the Execution API through this URL.
                "AIRFLOW__API__BASE_URL": f"http://{LOCALHOST}:{self.api_port}",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_server_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_server_port),
                # Parse the DAG folder soon after start, with one parsing process on a small machine.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                # A new triggerer takes over the triggers of one whose heartbeat is older than the
                # threshold, so a short threshold keeps the restart scenarios short.
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            }
        )
        return environment


class AirflowComponents:
    """A scheduler (LocalExecutor), DAG processor, triggerer and API server on SQLite, each a process.

    This is the set of processes ``airflow standalone`` runs. ``airflow standalone`` (3.3.2) starts
    each component once and never restarts one that dies, and it has no option to leave the
    triggerer out. So the test starts the four commands itself, with the environment standalone
    would set, and restarts the triggerer when a scenario kills it.
    """

    def __init__(self, settings: AirflowSettings) -> None:
        self.settings = settings
        self.environment = settings.environment()
        self.logs_folder = settings.home / "component-logs"
        self.logs_folder.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, ManagedProcess] = {}
        self._triggerer_starts = 0
        self.api = httpx.Client(base_url=f"http://{LOCALHOST}:{settings.api_port}", timeout=HTTP_TIMEOUT_SECONDS)

    # Life cycle

    def start(self) -> None:
        self._migrate_database()
        self._start_component("api-server", ["api-server"])
        self._start_component("scheduler", ["scheduler", *NO_LOG_SERVER])
        self._start_component("dag-processor", ["dag-processor"])
        self.start_triggerer()

    def stop(self) -> None:
        """Stop every component, task and trigger processes included."""
        self.api.close()
        for process in reversed(list(self.processes.values())):
            process.stop()

    def _migrate_database(self) -> None:
        log_path = self.logs_folder / "db-migrate.log"
        with log_path.open("wb") as log_file:
            result = subprocess.run(
                [AIRFLOW, "db", "migrate"],
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=DB_MIGRATE_TIMEOUT_SECONDS,
                start_new_session=True,
            )
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed with exit code {result.returncode}:\n{tail(log_path)}")

    def _start_component(self, key: str, arguments: list[str]) -> ManagedProcess:
        log_path = self.logs_folder / f"{key}.log"
        process = ManagedProcess(key, [AIRFLOW, *arguments], self.environment, log_path)
        self.processes[key] = process
        return process

    # Triggerer

    @property
    def triggerer(self) -> ManagedProcess:
        return self.processes[f"triggerer-{self._triggerer_starts}"]

    def start_triggerer(self) -> ManagedProcess:
        """Start a new ``airflow triggerer``, logging to a file of its own (``triggerer-<start number>.log``)."""
        self._triggerer_starts += 1
        return self._start_component(f"triggerer-{self._triggerer_starts}", ["triggerer", *NO_LOG_SERVER])

    def triggerer_processes(self) -> list[psutil.Process]:
        """Return the current triggerer's processes: ``airflow triggerer`` and its trigger runner child."""
        process = self.triggerer
        if not process.is_running():
            return []
        return [psutil.Process(process.pid), *process.descendants()]

    def wait_for_new_triggerer_job(self, started_after: str, timeout_seconds: float) -> dict[str, Any]:
        """Wait until a triggerer job that started after ``started_after`` (ISO 8601) heartbeats."""

        def alive_new_job() -> dict[str, Any] | None:
            response = self.api.get(
                "/api/v2/jobs",
                params={"job_type": "TriggererJob", "is_alive": "true", "start_date_gt": started_after},
            )
            response.raise_for_status()
            jobs = response.json()["jobs"]
            return jobs[0] if jobs else None

        return wait_until(
            alive_new_job,
            timeout_seconds,
            f"a triggerer job started after {started_after} to heartbeat",
            lambda: self.describe(logs=("triggerer",)),
        )

    # Task processes

    def task_runner_processes(self, task_instance_id: str) -> list[psutil.Process]:
        """Return the task runner process of one task instance, found by its process title.

        Under the LocalExecutor the scheduler forks worker processes, titled ``airflow worker --
        LocalExecutor: ...``, and each worker supervises a task runner that it forks for a task.
        The task runner, which runs ``execute``, titles itself ``airflow worker -- <task instance id>``.
        """
        title = f"airflow worker -- {task_instance_id}"
        scheduler = self.processes["scheduler"]
        return [process for process in scheduler.descendants() if command_line(process).strip() == title]

    # REST API

    def wait_until_ready(self, dag_ids: Iterable[str], timeout_seconds: float) -> None:
        """Wait for the API server's health endpoint and for every DAG to be parsed."""
        deadline = time.monotonic() + timeout_seconds

        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.0)

        wait_until(
            self._is_healthy, remaining(), "the API server, scheduler and triggerer to report healthy", self.describe
        )
        for dag_id in dag_ids:
            wait_until(
                lambda dag_id=dag_id: self._get_or_none(f"/api/v2/dags/{dag_id}") is not None,
                remaining(),
                f"the DAG processor to parse DAG {dag_id}",
                self.describe,
            )

    def _is_healthy(self) -> bool:
        for name, process in self.processes.items():
            if not process.is_running():
                raise RuntimeError(f"Airflow's {name} exited with code {process.popen.returncode}.\n{self.describe()}")
        health = self._get_or_none("/api/v2/monitor/health")
        if health is None:
            return False
        return all(health[component]["status"] == "healthy" for component in ("metadatabase", "scheduler", "triggerer"))

    def _get_or_none(self, path: str) -> Any:
        try:
            response = self.api.get(path)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a REST API request and return the JSON body. Raise AssertionError with the body on an error status."""
        response = self.api.request(method, path, **kwargs)
        if response.is_error:
            raise AssertionError(f"{method} {path} failed with HTTP {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str) -> str:
        """Create a DAG run now and return its run id."""
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        return run["dag_run_id"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def wait_for_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout_seconds: float,
    ) -> dict[str, Any]:
        """Wait until the task instance is in one of ``states`` and return it.

        :raises AssertionError: at once when it reaches ``success`` or ``failed`` and that is not in ``states``.
        """
        expected = set(states)
        seen: list[str | None] = []

        def reached() -> dict[str, Any] | None:
            task_instance = self.task_instance(dag_id, run_id, task_id)
            state = task_instance["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in expected:
                return task_instance
            if state in ("success", "failed"):
                raise AssertionError(
                    f"Task {dag_id}.{task_id} of run {run_id} ended {state}, expected one of {sorted(expected)}. "
                    f"States seen: {seen}.\n{self.describe(dag_id=dag_id)}"
                )
            return None

        return wait_until(
            reached,
            timeout_seconds,
            f"task {dag_id}.{task_id} of run {run_id} to reach one of {sorted(expected)} (states seen: {seen})",
            lambda: self.describe(dag_id=dag_id),
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        """Return an XCom value, or None when the task has not pushed ``key``."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        response = self.api.get(path, params={"deserialize": "true"})
        if response.status_code == 404:
            return None
        if response.is_error:
            raise AssertionError(f"GET {path} failed with HTTP {response.status_code}: {response.text}")
        return response.json()["value"]

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """Set a task instance's state as a user does in the UI, for example to ``failed``."""
        self.request(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
            json={"new_state": state},
        )

    # Diagnostics

    def describe(
        self, dag_id: str | None = None, logs: Iterable[str] = ("scheduler", "triggerer", "api-server")
    ) -> str:
        """Return where the Airflow home and logs are, with the tails of some component logs and of a DAG's task logs.

        :param logs: prefixes of the component log names to include, such as ``triggerer``.
        """
        parts = [f"Airflow home: {self.settings.home}", f"Component logs: {self.logs_folder}"]
        for key, process in self.processes.items():
            if key.startswith(tuple(logs)):
                parts.append(f"--- tail of {process.log_path} ---\n{tail(process.log_path)}")
        if dag_id is not None:
            task_logs_folder = self.settings.home / "logs" / f"dag_id={dag_id}"
            for task_log in sorted(task_logs_folder.rglob("*.log")):
                parts.append(f"--- tail of {task_log} ---\n{tail(task_log)}")
        return "\n".join(parts)
