"""Measure the cost of watching N desktop flow runs with DesktopFlowRunTrigger, beside dbt Cloud's trigger.

For each N, the script starts the Dataverse emulator in a process of its own and starts N runs on
it over HTTPS. It then starts a watcher process (``watch_pad.py``) that runs N triggers in one event
loop until every run has ended. The same is then done for ``DbtCloudRunJobTrigger`` against
``dbt_cloud_stub.py``, with a watcher (``watch_dbt_cloud.py``) in the peers' virtualenv. Each
server and each watcher is a separate process, and the two sides run one after the other, so
neither competes with the other for the machine's cores.

Run it with the provider's virtualenv, from the repository root::

    .venv/bin/python benchmarks/trigger_scale.py            # N = 100, 1000, 3000
    .venv/bin/python benchmarks/trigger_scale.py --quick    # N = 100, 300, shorter watch

docs/benchmarks.md describes each figure and how to create the peers' virtualenv.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from measure import STOPPED_EARLY_EXIT_CODE
from provider_source import ProviderSource, choose_source
from scale_report import (
    TARGET_EVENT_SLACK_SECONDS,
    SideResult,
    format_number,
    marginal_rss_kib_per_run,
    print_ratio_table,
    print_side_table,
    print_targets,
)
from servers import (
    BENCHMARKS_DIRECTORY,
    DBT_ACCOUNT_ID,
    DbtCloudStubServer,
    EmulatorServer,
    StartedRuns,
    base_environment,
    machine_busy_seconds,
)

RUN_COUNTS = (100, 1000, 3000)
QUICK_RUN_COUNTS = (100, 300)
# Keeps a measurement within minutes: starting 10000 runs alone takes about 10 s.
MAX_RUN_COUNT = 10000
# The operator's default check interval is 30 s. The benchmark scales it down so that several
# polls of every run fit in a short measurement. Per-poll figures do not depend on the interval
# as long as one tick's requests finish within it.
CHECK_INTERVAL_SECONDS = 2.0
QUICK_CHECK_INTERVAL_SECONDS = 1.0
# Check intervals in the steady window, in which every run is still running.
STEADY_TICKS = 5
QUICK_STEADY_TICKS = 3
# Seconds from the last run start to the triggers' start, in which the watcher process imports Airflow.
WATCHER_START_SECONDS = 10.0
# Starting a run took about 1 ms on a 2-core development machine, and the run length allows four times that.
RUN_START_SECONDS_ESTIMATE = 0.004
# Triggers give up this long after the last run's scheduled end, and a watcher still running this
# long after that is stopped.
WATCH_GRACE_SECONDS = 30.0
WATCHER_STOP_AFTER_SECONDS = 30.0
WATCHER_TERMINATE_TIMEOUT_SECONDS = 15.0
SERVER_SAMPLE_SECONDS = 0.25
TOKEN_LIFETIME_SECONDS = 3600
# With --wait-for-idle, a side starts once other processes use less than this share of the cores.
IDLE_CORE_SHARE = 0.25
IDLE_PROBE_SECONDS = 2.0

GUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DEFAULT_PEERS_PYTHON = BENCHMARKS_DIRECTORY / ".venv-peers" / "bin" / "python"


@dataclass
class WatchPlan:
    """Start time of the triggers and the steady window of one watch, in epoch seconds."""

    run_count: int
    check_interval: float
    run_seconds: float
    start_at: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0
    window_ticks: int = 0


# Planning -----------------------------------------------------------------------------------------


def run_seconds_for(run_count: int, check_interval: float, steady_ticks: int) -> float:
    """Return how long each run must stay Running so the steady window fits before the first run ends."""
    start_budget = run_count * RUN_START_SECONDS_ESTIMATE + 1.0
    return start_budget + WATCHER_START_SECONDS + (steady_ticks + 2) * check_interval


def plan_window(plan: WatchPlan, started: StartedRuns, steady_ticks: int) -> None:
    """Set the start time and the steady window: whole check intervals from the second tick to the first run's end."""
    first_end = min(started.sent_at.values()) + plan.run_seconds
    # A multiple of the interval, so that a trigger that aligns its polls to the clock polls at
    # the same instants as one that counts from its start.
    plan.start_at = math.ceil((time.time() + WATCHER_START_SECONDS) / plan.check_interval) * plan.check_interval
    # The first tick also opens connections and fetches a token, so the window starts half an
    # interval after the second tick is due and ends on a half interval, between two ticks.
    plan.window_start = plan.start_at + 1.5 * plan.check_interval
    available = math.floor((first_end - plan.window_start) / plan.check_interval)
    plan.window_ticks = max(0, min(steady_ticks, available))
    plan.window_end = plan.window_start + plan.window_ticks * plan.check_interval
    if plan.window_ticks < steady_ticks:
        print(
            f"  warning: only {plan.window_ticks} of {steady_ticks} steady ticks fit before the first run ends; "
            "starting the runs took longer than planned.",
            file=sys.stderr,
        )


# Running one side ----------------------------------------------------------------------------------


def wait_for_idle(limit_seconds: float) -> None:
    """Wait until the machine is nearly idle, for at most ``limit_seconds``, so other work skews less."""
    give_up_at = time.time() + limit_seconds
    while True:
        before = machine_busy_seconds()
        time.sleep(IDLE_PROBE_SECONDS)
        busy_cores = (machine_busy_seconds() - before) / IDLE_PROBE_SECONDS
        if busy_cores < IDLE_CORE_SHARE:
            return
        if time.time() > give_up_at:
            print(f"  warning: the machine is still busy ({busy_cores:.2f} cores used); measuring anyway.", file=sys.stderr)
            return


def run_watcher(
    command: list[str], environment: dict[str, str], plan: WatchPlan, deadline: float, server: Any, log_path: Path
) -> list[tuple[float, float, float]]:
    """Run a watcher process to its end and return (wall time, server CPU s, machine busy CPU s) samples.

    A watcher still running ``WATCHER_STOP_AFTER_SECONDS`` after the triggers' deadline gets SIGTERM,
    so it writes what it measured so far and exits. One that ignores SIGTERM is killed.
    """
    samples: list[tuple[float, float, float]] = []
    stop_at = deadline + WATCHER_STOP_AFTER_SECONDS
    with log_path.open("wb") as log:
        watcher = subprocess.Popen(
            command, env=environment, cwd=log_path.parent, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            while watcher.poll() is None:
                samples.append((time.time(), server.server.cpu_seconds(), machine_busy_seconds()))
                if time.time() > stop_at:
                    print(f"  warning: the watcher overran its time limit; stopping it (log: {log_path})", file=sys.stderr)
                    watcher.terminate()
                    watcher.wait(WATCHER_TERMINATE_TIMEOUT_SECONDS)
                    break
                time.sleep(SERVER_SAMPLE_SECONDS)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    samples.append((time.time(), server.server.cpu_seconds(), machine_busy_seconds()))
    if watcher.returncode not in (0, STOPPED_EARLY_EXIT_CODE):
        raise RuntimeError(f"The watcher exited with code {watcher.returncode}; its log is {log_path}.")
    return samples


def measure_side(
    side: str, run_count: int, arguments: argparse.Namespace, source: ProviderSource, directory: Path
) -> SideResult:
    """Start a server, start the runs, watch them in a watcher process, and compute the figures."""
    side_directory = directory / f"{side}-{run_count}"
    side_directory.mkdir()
    plan = WatchPlan(run_count, arguments.check_interval, run_seconds_for(run_count, arguments.check_interval, arguments.steady_ticks))

    server_environment = base_environment(side_directory / "airflow-home") | source.environment
    server: EmulatorServer | DbtCloudStubServer
    if side == "pad":
        server = EmulatorServer(side_directory, plan.run_seconds, arguments.token_lifetime, server_environment)
    else:
        server = DbtCloudStubServer(side_directory, plan.run_seconds, server_environment)
    try:
        started = server.start_runs(run_count)
        plan_window(plan, started, arguments.steady_ticks)
        runs_file = side_directory / "runs.json"
        runs_file.write_text(json.dumps(list(started.sent_at)), encoding="utf-8")
        server.reset_log()

        output = side_directory / "watch.json"
        deadline = max(started.sent_at.values()) + plan.run_seconds + WATCH_GRACE_SECONDS
        common = [
            "--runs", str(runs_file),
            "--output", str(output),
            "--log", str(side_directory / "watcher-records.log"),
            "--check-interval", str(plan.check_interval),
            "--deadline", str(deadline),
            "--start-at", str(plan.start_at),
        ]
        environment = base_environment(side_directory / "airflow-home") | server.watcher_environment()
        if side == "pad":
            environment |= source.environment
            command = [sys.executable, str(BENCHMARKS_DIRECTORY / "watch_pad.py"), *common]
        else:
            command = [str(arguments.peers_python), str(BENCHMARKS_DIRECTORY / "watch_dbt_cloud.py"), *common, "--account-id", str(DBT_ACCOUNT_ID)]

        server_samples = run_watcher(command, environment, plan, deadline, server, side_directory / "watcher.log")
        records = server.request_log()
    finally:
        server.stop()

    watch = json.loads(output.read_text(encoding="utf-8"))
    expected_root = source.environment.get("PYTHONPATH")
    if side == "pad" and expected_root and not watch["trigger_file"].startswith(expected_root):
        raise RuntimeError(f"The watcher imported the trigger from {watch['trigger_file']}, not from {expected_root}.")
    return compute_figures(side, plan, started, watch, records, server.status_endpoints, server_samples)


# Figures -------------------------------------------------------------------------------------------


def interpolate(samples: list[Any], at: float, column: int = 1) -> float:
    """Return ``column`` of (time, value, ...) samples at time ``at``, interpolated linearly."""
    previous = samples[0]
    for sample in samples:
        if sample[0] >= at:
            if sample[0] == previous[0]:
                return sample[column]
            share = (at - previous[0]) / (sample[0] - previous[0])
            return previous[column] + share * (sample[column] - previous[column])
        previous = sample
    return samples[-1][column]


def increase(samples: list[Any], start: float, end: float, column: int = 1) -> float:
    """Return how much a cumulative counter in ``column`` grew from ``start`` to ``end``."""
    return interpolate(samples, end, column) - interpolate(samples, start, column)


def runs_read_by(record: dict[str, Any]) -> int:
    """Return how many runs one status request read: one for a single-row GET, the ids listed for a batch."""
    if record["endpoint"] == "list_sessions":
        return len(set(GUID_PATTERN.findall(unquote(record.get("query") or ""))))
    return 1


def compute_figures(
    side: str,
    plan: WatchPlan,
    started: StartedRuns,
    watch: dict[str, Any],
    records: list[dict[str, Any]],
    status_endpoints: tuple[str, ...],
    server_samples: list[tuple[float, float, float]],
) -> SideResult:
    result = SideResult(side, plan.run_count, window_ticks=plan.window_ticks)
    status_records = [record for record in records if record["endpoint"] in status_endpoints]
    result.run_polls_all = sum(runs_read_by(record) for record in status_records)
    # The lag probe and the sampler cost about 0.01 core on their own, which is not the trigger's.
    probe_cpu_per_second = watch["probe_cpu_per_second"]
    watch_seconds = watch["finished_at"] - watch["started_at"]
    if result.run_polls_all:
        cpu_total = watch["cpu_seconds_total"] - probe_cpu_per_second * watch_seconds
        result.cpu_seconds_per_1000_polls_all = cpu_total / result.run_polls_all * 1000

    if plan.window_ticks > 0:
        in_window = [record for record in status_records if plan.window_start <= record["time"] < plan.window_end]
        polls = sum(runs_read_by(record) for record in in_window)
        window_seconds = plan.window_end - plan.window_start
        cpu = increase(watch["samples"], plan.window_start, plan.window_end) - probe_cpu_per_second * window_seconds
        server_cpu = increase(server_samples, plan.window_start, plan.window_end)
        machine_cpu = increase(server_samples, plan.window_start, plan.window_end, column=2)
        if polls:
            # A tick is one status read of every watched run, however long the reads take.
            result.status_requests_per_tick = len(in_window) * plan.run_count / polls
            result.poll_period_seconds = window_seconds * plan.run_count / polls
            result.cpu_seconds_per_1000_polls_steady = cpu / polls * 1000
        result.watcher_core_share = cpu / window_seconds
        result.server_core_share = server_cpu / window_seconds
        result.other_core_share = max(0.0, machine_cpu - cpu - server_cpu) / window_seconds
        # A spike is stored with the time the probe woke up; it held the loop for `lag` seconds before that.
        spikes = [lag for at, lag in watch["lag_spikes"] if at > plan.window_start and at - lag < plan.window_end]
        result.lag_max_steady_seconds = max(spikes, default=0.0)

    if side == "pad":
        result.token_requests = sum(1 for record in records if record["endpoint"] == "token")
        result.discovery_requests = sum(1 for record in records if record["endpoint"] == "openid")

    result.rss_growth_kib = watch["peak_rss_after_kib"] - watch["peak_rss_before_kib"]
    result.rss_growth_kib_per_run = result.rss_growth_kib / plan.run_count
    result.lag_max_seconds = watch["lag_max_seconds"]
    result.lag_p99_seconds = watch["lag_p99_seconds"]
    result.tcp_connects = watch["tcp_connects"]
    result.stopped_early = watch["stopped_early"]
    result.event_loop = watch["event_loop"]
    result.watch_seconds = watch_seconds
    result.probe_cpu_per_second = probe_cpu_per_second
    result.full_collection_max_seconds = max((seconds for _, seconds in watch["full_collections"]), default=0.0)
    result.start_uncertainty_seconds = started.max_start_request_seconds

    latencies = []
    for run_id, (event_time, status) in watch["events"].items():
        result.events_by_status[status] = result.events_by_status.get(status, 0) + 1
        latencies.append(event_time - (started.sent_at[run_id] + plan.run_seconds))
    result.missing_events = plan.run_count - len(watch["events"])
    if latencies:
        latencies.sort()
        result.event_latency_median = statistics.median(latencies)
        result.event_latency_p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        result.event_latency_max = latencies[-1]
        result.late_events = sum(1 for latency in latencies if latency > plan.check_interval + TARGET_EVENT_SLACK_SECONDS)
    return result


# Entry point ---------------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    parser.add_argument("--quick", action="store_true", help="N = 100 and 300, 1 s interval, 3 steady ticks")
    parser.add_argument("--runs", type=int, nargs="+", help="numbers of runs to watch (default: 100 1000 3000)")
    parser.add_argument("--check-interval", type=float, help=f"seconds between polls of a run (default: {CHECK_INTERVAL_SECONDS:g})")
    parser.add_argument("--steady-ticks", type=int, help=f"check intervals in the steady window (default: {STEADY_TICKS})")
    parser.add_argument("--no-peer", action="store_true", help="measure only DesktopFlowRunTrigger")
    parser.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON, help="Python of the peers' virtualenv (default: %(default)s)")

    parser.add_argument(
        "--provider-ref",
        help="measure this git commit or branch of the provider instead of the installed work tree",
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=TOKEN_LIFETIME_SECONDS,
        help="lifetime in seconds of the emulator's access tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--wait-for-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"before each measurement, wait up to this long for other processes to use under {IDLE_CORE_SHARE:g} cores (default: 0)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the working directory with the logs")
    arguments = parser.parse_args()

    arguments.runs = arguments.runs or list(QUICK_RUN_COUNTS if arguments.quick else RUN_COUNTS)
    if arguments.check_interval is None:
        arguments.check_interval = QUICK_CHECK_INTERVAL_SECONDS if arguments.quick else CHECK_INTERVAL_SECONDS
    if arguments.steady_ticks is None:
        arguments.steady_ticks = QUICK_STEADY_TICKS if arguments.quick else STEADY_TICKS

    invalid_counts = [count for count in arguments.runs if not 1 <= count <= MAX_RUN_COUNT]
    if invalid_counts:
        parser.error(f"--runs must be from 1 to {MAX_RUN_COUNT}, got {invalid_counts}.")
    if arguments.check_interval <= 0 or arguments.steady_ticks < 1:
        parser.error("--check-interval must be positive and --steady-ticks at least 1.")
    if not arguments.no_peer and not arguments.peers_python.exists():
        parser.error(
            f"{arguments.peers_python} does not exist. Create the peers' virtualenv as docs/benchmarks.md shows, "
            "or pass --no-peer."
        )
    return arguments


def main() -> None:
    arguments = parse_arguments()
    directory = Path(tempfile.mkdtemp(prefix="trigger-scale-"))
    source = choose_source(arguments.provider_ref, directory)
    sides = ["pad"] if arguments.no_peer else ["pad", "dbt"]
    results: dict[str, list[SideResult]] = {side: [] for side in sides}
    print(f"provider: {source.label}")
    print(f"check interval {arguments.check_interval:g} s, {arguments.steady_ticks} steady ticks, working directory {directory}")
    for run_count in sorted(arguments.runs):
        for side in sides:
            if arguments.wait_for_idle > 0:
                wait_for_idle(arguments.wait_for_idle)
            print(f"measuring {side} with N = {run_count} ...", flush=True)
            # On an error the working directory stays, with the servers' and watchers' logs.
            results[side].append(measure_side(side, run_count, arguments, source, directory))
    if not arguments.keep:
        shutil.rmtree(directory, ignore_errors=True)

    print_side_table(f"DesktopFlowRunTrigger ({source.label}) against the Dataverse emulator", results["pad"])
    print(f"  marginal peak RSS growth per run: {format_number(marginal_rss_kib_per_run(results['pad']))} KiB")
    if "dbt" in results:
        print_side_table("DbtCloudRunJobTrigger (apache-airflow-providers-dbt-cloud) against dbt_cloud_stub.py", results["dbt"])
        print(f"  marginal peak RSS growth per run: {format_number(marginal_rss_kib_per_run(results['dbt']))} KiB")
        print_ratio_table(results["pad"], results["dbt"])
    print_targets(results["pad"], results.get("dbt", []), arguments.check_interval)
    if arguments.json is not None:
        figures = {side: [asdict(result) for result in side_results] for side, side_results in results.items()}
        payload = {"provider": source.label, "check_interval": arguments.check_interval, "results": figures}
        arguments.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
