"""Watch dbt Cloud job runs with one ``DbtCloudRunJobTrigger`` each, in one event loop, and write the measurements.

It runs in the peers' virtualenv (``benchmarks/.venv-peers``), where apache-airflow and
apache-airflow-providers-dbt-cloud are installed. ``trigger_scale.py`` starts it after it has
started the runs on ``dbt_cloud_stub.py``, and sets ``AIRFLOW_CONN_DBT_CLOUD_DEFAULT`` to the stub
and ``SSL_CERT_FILE`` to the stub's CA.
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
    parser.add_argument("--runs", type=Path, required=True, help="JSON file with the run ids to watch")
    parser.add_argument("--output", type=Path, required=True, help="file to write the measurements to (JSON)")
    parser.add_argument("--log", type=Path, required=True, help="file for records of Python's logging module; Airflow's structlog output goes to standard output")
    parser.add_argument("--check-interval", type=float, required=True, help="seconds between two status reads of a run")
    parser.add_argument("--deadline", type=float, required=True, help="epoch seconds after which a trigger gives up")
    parser.add_argument("--start-at", type=float, required=True, help="epoch seconds at which the triggers start")
    parser.add_argument("--account-id", type=int, required=True, help="dbt Cloud account id of the runs")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    logging.basicConfig(filename=arguments.log, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    # Imported before the memory baseline, so the baseline contains Airflow and the provider.
    from airflow.providers.dbt.cloud.triggers.dbt import DbtCloudRunJobTrigger

    def make_trigger(run_id: str) -> DbtCloudRunJobTrigger:
        return DbtCloudRunJobTrigger(
            conn_id="dbt_cloud_default",
            run_id=int(run_id),
            end_time=arguments.deadline,
            poll_interval=arguments.check_interval,
            account_id=arguments.account_id,
        )

    run_ids = read_run_ids(arguments.runs)
    if arguments.start_at < time.time():
        print(f"warning: started {time.time() - arguments.start_at:.1f} s after --start-at", file=sys.stderr)
    trigger_file = sys.modules[DbtCloudRunJobTrigger.__module__].__file__ or ""
    watch_triggers(make_trigger, run_ids, start_at=arguments.start_at, output=arguments.output, trigger_file=trigger_file)


if __name__ == "__main__":
    main()
