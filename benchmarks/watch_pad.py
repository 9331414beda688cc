"""Watch desktop flow runs with one ``DesktopFlowRunTrigger`` each, in one event loop, and write the measurements.

``trigger_scale.py`` starts this script in a process of its own, after it has started the runs on
the emulator, and sets ``AIRFLOW_CONN_DATAVERSE_DEFAULT`` to the emulator's connection.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import read_run_ids, watch_triggers  # noqa: E402


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True, help="JSON file with the flowsession ids to watch")
    parser.add_argument("--output", type=Path, required=True, help="file to write the measurements to (JSON)")
    parser.add_argument("--log", type=Path, required=True, help="file for records of Python's logging module; Airflow's structlog output goes to standard output")
    parser.add_argument("--check-interval", type=float, required=True, help="seconds between two status reads of a run")
    parser.add_argument("--deadline", type=float, required=True, help="epoch seconds after which a trigger gives up")
    parser.add_argument("--start-at", type=float, required=True, help="epoch seconds at which the triggers start")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    logging.basicConfig(filename=arguments.log, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    # Imported before the memory baseline, so the baseline contains Airflow and the provider.
    from airflow_provider_pad.triggers.desktop_flow import DesktopFlowRunTrigger

    def make_trigger(flow_session_id: str) -> DesktopFlowRunTrigger:
        return DesktopFlowRunTrigger(
            flow_session_id=flow_session_id,
            dataverse_conn_id="dataverse_default",
            check_interval=arguments.check_interval,
            deadline=arguments.deadline,
            cancel_on_kill=False,
        )

    run_ids = read_run_ids(arguments.runs)
    if arguments.start_at < time.time():
        print(f"warning: started {time.time() - arguments.start_at:.1f} s after --start-at", file=sys.stderr)
    trigger_file = sys.modules[DesktopFlowRunTrigger.__module__].__file__ or ""
    watch_triggers(make_trigger, run_ids, start_at=arguments.start_at, output=arguments.output, trigger_file=trigger_file)


if __name__ == "__main__":
    main()
