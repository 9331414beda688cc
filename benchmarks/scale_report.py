"""The figures ``trigger_scale.py`` computes for one trigger at one N, the tables it prints, and the targets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Targets, checked at N = 1000. docs/benchmarks.md explains each.
TARGET_RUN_COUNT = 1000
TARGET_RUNS_PER_REQUEST = 50
TARGET_LAG_SECONDS = 0.050
TARGET_RSS_KIB_PER_RUN = 50
TARGET_CPU_RATIO = 0.25
TARGET_EVENT_SLACK_SECONDS = 1.0


@dataclass
class SideResult:
    """The figures for one trigger at one N. Times in seconds, memory in KiB."""

    side: str
    run_count: int
    window_ticks: int = 0
    status_requests_per_tick: float = math.nan
    poll_period_seconds: float = math.nan
    cpu_seconds_per_1000_polls_steady: float = math.nan
    cpu_seconds_per_1000_polls_all: float = math.nan
    run_polls_all: int = 0
    token_requests: int | None = None
    discovery_requests: int | None = None
    tcp_connects: int = 0
    rss_growth_kib: int = 0
    rss_growth_kib_per_run: float = math.nan
    lag_max_seconds: float = math.nan
    lag_p99_seconds: float = math.nan
    lag_max_steady_seconds: float = math.nan
    event_latency_median: float = math.nan
    event_latency_p95: float = math.nan
    event_latency_max: float = math.nan
    late_events: int = 0
    events_by_status: dict[str, int] = field(default_factory=dict)
    missing_events: int = 0
    stopped_early: bool = False
    watcher_core_share: float = math.nan
    server_core_share: float = math.nan
    other_core_share: float = math.nan
    event_loop: str = ""
    start_uncertainty_seconds: float = 0.0
    probe_cpu_per_second: float = 0.0
    full_collection_max_seconds: float = math.nan
    watch_seconds: float = 0.0


def format_number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def format_steady_lag(seconds: float) -> str:
    """Format the worst lag in the steady window in ms, or "<5" when no lag over 5 ms was recorded there."""
    if seconds == 0:
        return "<5"
    return format_number(seconds * 1000, 0)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(header[column]), *(len(row[column]) for row in rows)) for column in range(len(header))]
    print(f"\n{title}")
    print("  ".join(name.rjust(width) for name, width in zip(header, widths)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def print_side_table(title: str, results: list[SideResult]) -> None:
    header = [
        "N", "req/tick", "poll s", "tokens", "connects", "CPU s/1k polls", "(all)", "RSS KiB/run",
        "lag max ms", "(steady)", "lag p99 ms", "full GC ms", "end->event p50/p95/max s", "late", "events",
        "trigger core", "server core", "other core",
    ]
    rows = []
    for result in results:
        counts = [f"{status} {count}" for status, count in sorted(result.events_by_status.items())]
        if result.missing_events:
            counts.append(f"none {result.missing_events}")
        events = ", ".join(counts) + (" (stopped)" if result.stopped_early else "")
        rows.append([
            str(result.run_count),
            format_number(result.status_requests_per_tick),
            format_number(result.poll_period_seconds, 2),
            format_number(result.token_requests),
            format_number(result.tcp_connects),
            format_number(result.cpu_seconds_per_1000_polls_steady, 3),
            format_number(result.cpu_seconds_per_1000_polls_all, 3),
            format_number(result.rss_growth_kib_per_run),
            format_number(result.lag_max_seconds * 1000, 0),
            format_steady_lag(result.lag_max_steady_seconds),
            format_number(result.lag_p99_seconds * 1000, 0),
            format_number(result.full_collection_max_seconds * 1000, 0),
            "/".join(format_number(value, 2) for value in (result.event_latency_median, result.event_latency_p95, result.event_latency_max)),
            str(result.late_events),
            events,
            format_number(result.watcher_core_share, 2),
            format_number(result.server_core_share, 2),
            format_number(result.other_core_share, 2),
        ])
    print_table(title, header, rows)


def marginal_rss_kib_per_run(results: list[SideResult]) -> float:
    """Return the slope of peak RSS growth between the smallest and largest N, which cancels one-time costs."""
    if len(results) < 2:
        return math.nan
    low, high = results[0], results[-1]
    return (high.rss_growth_kib - low.rss_growth_kib) / (high.run_count - low.run_count)


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def print_ratio_table(pad: list[SideResult], dbt: list[SideResult]) -> None:
    rows = []
    for ours, theirs in zip(pad, dbt):
        rows.append([
            str(ours.run_count),
            format_number(ratio(ours.cpu_seconds_per_1000_polls_steady, theirs.cpu_seconds_per_1000_polls_steady), 2),
            format_number(ratio(ours.cpu_seconds_per_1000_polls_all, theirs.cpu_seconds_per_1000_polls_all), 2),
            format_number(ratio(ours.status_requests_per_tick, theirs.status_requests_per_tick), 2),
            format_number(ratio(ours.rss_growth_kib_per_run, theirs.rss_growth_kib_per_run), 2),
        ])
    header = ["N", "CPU/poll (steady)", "CPU/poll (all)", "requests/tick", "RSS/run"]
    print_table("Ratios, DesktopFlowRunTrigger / DbtCloudRunJobTrigger (below 1: the provider uses less)", header, rows)


def print_targets(pad: list[SideResult], dbt: list[SideResult], check_interval: float) -> None:
    at_target = next((result for result in pad if result.run_count == TARGET_RUN_COUNT), None)
    peer = next((result for result in dbt if result.run_count == TARGET_RUN_COUNT), None)
    if at_target is None:
        print(f"\nTargets are checked at N = {TARGET_RUN_COUNT}, which this run did not measure.")
        return
    request_limit = math.ceil(TARGET_RUN_COUNT / TARGET_RUNS_PER_REQUEST)
    cpu_ratio = ratio(at_target.cpu_seconds_per_1000_polls_steady, peer.cpu_seconds_per_1000_polls_steady) if peer else math.nan
    event_limit = check_interval + TARGET_EVENT_SLACK_SECONDS

    def verdict(met: bool | None) -> str:
        if met is None:
            return "n/a"
        return "met" if met else "NOT met"

    rows = [
        [f"status requests per tick <= {request_limit}", format_number(at_target.status_requests_per_tick),
         verdict(at_target.status_requests_per_tick <= request_limit)],
        ["token requests: 1 per credential per lifetime", format_number(at_target.token_requests),
         verdict(at_target.token_requests == 1)],
        [f"event-loop lag < {TARGET_LAG_SECONDS * 1000:.0f} ms", format_number(at_target.lag_max_seconds * 1000, 0) + " ms",
         verdict(at_target.lag_max_seconds < TARGET_LAG_SECONDS)],
        [f"peak RSS growth < {TARGET_RSS_KIB_PER_RUN} KiB per run", format_number(at_target.rss_growth_kib_per_run) + " KiB",
         verdict(at_target.rss_growth_kib_per_run < TARGET_RSS_KIB_PER_RUN)],
        [f"CPU per run-poll <= {TARGET_CPU_RATIO} x dbt Cloud's", format_number(cpu_ratio, 2) + " x",
         verdict(None if math.isnan(cpu_ratio) else cpu_ratio <= TARGET_CPU_RATIO)],
        [f"run end to event <= {event_limit:g} s (max)", format_number(at_target.event_latency_max, 2) + " s",
         verdict(at_target.event_latency_max <= event_limit)],
    ]
    print_table(f"Targets at N = {TARGET_RUN_COUNT}", ["target", "measured", "verdict"], rows)
