"""Serve a minimal stand-in for the two dbt Cloud v2 API endpoints that the dbt Cloud trigger benchmark uses.

It exists only so that ``DbtCloudRunJobTrigger`` (apache-airflow-providers-dbt-cloud) can be measured
beside the provider's trigger on this machine. It serves HTTPS on 127.0.0.1 with a throwaway CA,
because the dbt Cloud hook builds every URL as ``https://{connection host}/api/v2/accounts/...``:

- ``POST /api/v2/accounts/{account_id}/jobs/{job_id}/run/`` starts a run: it is Running (status 3)
  for ``--run-seconds`` after the request arrives, then Success (status 10).
- ``GET /api/v2/accounts/{account_id}/runs/{run_id}/`` returns ``{"data": {"id": ..., "status": ...}}``,
  the field ``DbtCloudHook.get_job_status`` reads (checked against provider version 4.11.1).

Every API request needs ``Authorization: Token <token>``. The admin routes ``GET /_stub/requests``
(the request log, oldest first) and ``POST /_stub/reset`` (empty it) need no token and are not logged.
The script stops on SIGINT or SIGTERM and removes its ready file.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from airflow_provider_pad.emulator.certificates import write_certificates

DEFAULT_TOKEN = "dbt-cloud-stub-token"
# dbt Cloud run status codes, as DbtCloudJobRunStatus in the dbt Cloud provider lists them.
RUNNING = 3
SUCCESS = 10
STATUS_NAMES = {RUNNING: "Running", SUCCESS: "Success"}

RUN_STATUS_PATH = re.compile(r"/api/v2/accounts/(?P<account_id>\d+)/runs/(?P<run_id>\d+)/?")
TRIGGER_RUN_PATH = re.compile(r"/api/v2/accounts/(?P<account_id>\d+)/jobs/(?P<job_id>\d+)/run/?")
FIRST_RUN_ID = 70000001


class StubState:
    """Run end times and the request log. Only uvicorn's event loop thread uses them."""

    def __init__(self, run_seconds: float) -> None:
        self.run_seconds = run_seconds
        self.run_ends: dict[int, float] = {}
        self.next_run_id = FIRST_RUN_ID
        self.log: list[dict[str, Any]] = []

    def start_run(self, now: float) -> int:
        run_id = self.next_run_id
        self.next_run_id += 1
        self.run_ends[run_id] = now + self.run_seconds
        return run_id

    def status(self, run_id: int, now: float) -> int | None:
        end = self.run_ends.get(run_id)
        if end is None:
            return None
        return SUCCESS if now >= end else RUNNING


class DbtCloudStub:
    """The stub's ASGI application: it routes each request, checks the token and logs API requests."""

    def __init__(self, state: StubState, token: str) -> None:
        self.state = state
        self.authorization = f"Token {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        arrived_at = time.time()
        path = scope["path"]
        method = scope["method"]
        await _read_body(receive)

        if path.startswith("/_stub/"):
            status, body = self._admin(method, path)
            await _respond(send, status, body)
            return

        endpoint, status, body = self._api(method, path, dict(scope["headers"]), arrived_at)
        self.state.log.append({"method": method, "path": path, "endpoint": endpoint, "status": status, "time": arrived_at})
        await _respond(send, status, body)

    def _api(self, method: str, path: str, headers: dict[bytes, bytes], now: float) -> tuple[str | None, int, Any]:
        if headers.get(b"authorization") != self.authorization:
            return None, 401, {"status": {"code": 401, "is_success": False, "user_message": "Invalid token."}}

        match = RUN_STATUS_PATH.fullmatch(path)
        if match is not None and method == "GET":
            run_id = int(match["run_id"])
            status = self.state.status(run_id, now)
            if status is None:
                return "run_status", 404, {"status": {"code": 404, "is_success": False, "user_message": f"Run {run_id} was not found."}}
            data = {
                "id": run_id,
                "account_id": int(match["account_id"]),
                "status": status,
                "status_humanized": STATUS_NAMES[status],
                "is_complete": status == SUCCESS,
            }
            return "run_status", 200, {"status": {"code": 200, "is_success": True}, "data": data}

        match = TRIGGER_RUN_PATH.fullmatch(path)
        if match is not None and method == "POST":
            run_id = self.state.start_run(now)
            data = {"id": run_id, "job_definition_id": int(match["job_id"]), "account_id": int(match["account_id"]), "status": RUNNING}
            return "trigger_run", 200, {"status": {"code": 200, "is_success": True}, "data": data}

        return None, 404, {"status": {"code": 404, "is_success": False, "user_message": f"No route {method} {path}."}}

    def _admin(self, method: str, path: str) -> tuple[int, Any]:
        if method == "GET" and path == "/_stub/requests":
            return 200, self.state.log
        if method == "POST" and path == "/_stub/reset":
            self.state.log.clear()
            return 200, {}
        return 404, {"error": f"No admin route {method} {path}. Routes: GET /_stub/requests, POST /_stub/reset."}


async def _read_body(receive: Any) -> None:
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)


async def _respond(send: Any, status: int, body: Any) -> None:
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1, or 0 for a free one (default: 0)")
    parser.add_argument("--run-seconds", type=float, required=True, help="seconds a started run stays Running")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the API token every request must carry")
    parser.add_argument(
        "--ready-file", type=Path, required=True, help="file to write host, CA path and token to (JSON) once serving"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    with tempfile.TemporaryDirectory(prefix="dbt-cloud-stub-") as directory:
        certificates = write_certificates(Path(directory), ("127.0.0.1",))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", arguments.port))
        port = listener.getsockname()[1]

        config = uvicorn.Config(
            DbtCloudStub(StubState(arguments.run_seconds), arguments.token),
            http="h11",
            loop="asyncio",
            lifespan="off",
            ssl_certfile=str(certificates.certificate_path),
            ssl_keyfile=str(certificates.private_key_path),
            log_config=None,
            access_log=False,
        )
        server = uvicorn.Server(config)

        def request_stop(signal_number: int, frame: FrameType | None) -> None:
            server.should_exit = True

        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        # uvicorn installs no signal handlers outside the main thread, so this one stops it.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not server.started:
            if not thread.is_alive():
                print("error: the dbt Cloud stub failed to start; see the log above", file=sys.stderr)
                return 1
            time.sleep(0.01)

        ready = {"host": f"127.0.0.1:{port}", "ca_path": str(certificates.ca_path), "token": arguments.token}
        temporary = arguments.ready_file.with_name(arguments.ready_file.name + ".tmp")
        temporary.write_text(json.dumps(ready), encoding="utf-8")
        temporary.replace(arguments.ready_file)
        try:
            while thread.is_alive():
                thread.join(0.5)
        finally:
            arguments.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
