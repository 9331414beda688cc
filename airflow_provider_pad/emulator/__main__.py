"""
Serve the Dataverse emulator in the foreground until SIGINT or SIGTERM.

On start it prints shell lines that set and export ``AIRFLOW_CONN_DATAVERSE_DEFAULT``, and the
CA certificate's path. With ``--ready-file`` it also writes the connection JSON to a file once
it serves, so that a script can wait for that file. The file is removed on stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from airflow_provider_pad.emulator.server import (
    DEFAULT_HOST,
    DEFAULT_QUEUE_SECONDS,
    DEFAULT_RUN_SECONDS,
    DEFAULT_TOKEN_LIFETIME_SECONDS,
    DataverseEmulator,
)

DEFAULT_PORT = 8443
CONNECTION_VARIABLE = "AIRFLOW_CONN_DATAVERSE_DEFAULT"

logger = logging.getLogger("airflow_provider_pad.emulator")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_pad.emulator",
        description="Serve a local emulator of the Microsoft identity platform and the Dataverse Web API "
        "for desktop flows, over HTTPS with a CA generated at start.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port to listen on, or 0 for a free port (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-seconds",
        type=float,
        default=DEFAULT_QUEUE_SECONDS,
        help="seconds a run waits in the queue before it runs (default: %(default)s)",
    )
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=DEFAULT_RUN_SECONDS,
        help="seconds a run stays Running before its outcome (default: %(default)s)",
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=DEFAULT_TOKEN_LIFETIME_SECONDS,
        help="lifetime of each access token in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="file to write the connection JSON to once the emulator serves, removed again on stop",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        logger.info("Received %s. Stopping the Dataverse emulator.", signal.Signals(signal_number).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    emulator = DataverseEmulator(
        host=arguments.host,
        port=arguments.port,
        token_lifetime_seconds=arguments.token_lifetime,
        queue_seconds=arguments.queue_seconds,
        run_seconds=arguments.run_seconds,
    )
    try:
        emulator.start()
    except (OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    try:
        connection_json = emulator.connection_json()
        print(f"{CONNECTION_VARIABLE}={shlex.quote(connection_json)}")
        print(f"export {CONNECTION_VARIABLE}")
        print(f"# CA certificate: {emulator.ca_path}")
        sys.stdout.flush()
        if arguments.ready_file is not None:
            _write_atomically(arguments.ready_file, connection_json)

        # A timeout keeps the wait responsive to signals on every platform.
        while not stop_requested.wait(timeout=0.5):
            pass
    finally:
        emulator.stop()
        if arguments.ready_file is not None:
            arguments.ready_file.unlink(missing_ok=True)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a partly written file."""
    temporary_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary_path.write_text(text, encoding="utf-8")
    os.replace(temporary_path, path)


if __name__ == "__main__":
    sys.exit(main())
