"""Watch many trigger coroutines in one event loop and record what the trigger benchmark reports.

The provider's watcher (``watch_pad.py``) and the dbt Cloud watcher (``watch_dbt_cloud.py``) both
call :func:`watch_triggers`, so both triggers are measured the same way. The module uses only the
standard library because the two watchers run in different virtualenvs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

# The lag probe sleeps this long and records how late it wakes up.
LAG_PROBE_SLEEP_SECONDS = 0.010
# Lags above this are also kept with their time, so a report can find the worst lag in a time window.
LAG_SPIKE_SECONDS = 0.005
# Seconds between two samples of wall time, CPU time and resident memory.
SAMPLE_INTERVAL_SECONDS = 0.25
# Seconds the lag probe and the sampler run alone before the watch, to measure their own CPU cost.
PROBE_CALIBRATION_SECONDS = 3.0
# Exit code of a watcher stopped by SIGTERM before every trigger yielded its event.
STOPPED_EARLY_EXIT_CODE = 3


class Trigger(Protocol):
    """The part of Airflow's ``BaseTrigger`` the benchmark uses."""

    def run(self) -> AsyncIterator[Any]: ...


@dataclass
class WatchResult:
    """Measurements of one watcher process, written as JSON for ``trigger_scale.py``.

    Times are epoch seconds (``time.time()``). CPU times are ``time.process_time()`` seconds of the
    whole process, all threads included. Memory is in KiB.
    """

    runs: int
    # File of the trigger's module, to confirm which installation was measured.
    trigger_file: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    cpu_seconds_total: float = 0.0
    # CPU seconds per second that the lag probe and the sampler use on their own, in an idle loop.
    probe_cpu_per_second: float = 0.0
    peak_rss_before_kib: int = 0
    peak_rss_after_kib: int = 0
    lag_max_seconds: float = 0.0
    lag_p99_seconds: float = 0.0
    lag_samples: int = 0
    # [wall time, lag seconds] of every lag above LAG_SPIKE_SECONDS.
    lag_spikes: list[list[float]] = field(default_factory=list)
    tcp_connects: int = 0
    # [wall time at its end, seconds] of every garbage collection of the oldest generation.
    full_collections: list[list[float]] = field(default_factory=list)
    event_loop: str = ""
    # [wall time, process CPU seconds, current RSS KiB], every SAMPLE_INTERVAL_SECONDS.
    samples: list[list[float]] = field(default_factory=list)
    # run id -> [wall time of its event, event status]
    events: dict[str, list[Any]] = field(default_factory=dict)
    # run id -> error text, for runs whose trigger raised instead of yielding an event.
    errors: dict[str, str] = field(default_factory=dict)
    # True when the watch was stopped (SIGTERM) before every trigger had yielded its event.
    stopped_early: bool = False

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")


def peak_rss_kib() -> int:
    """Return the process's peak resident set size so far, in KiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib() -> int:
    """Return the process's resident set size now, from ``/proc/self/status`` (Linux only)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LagProbe:
    """Measure how late the event loop wakes a coroutine that sleeps ``LAG_PROBE_SLEEP_SECONDS``.

    A callback that keeps the loop busy (parsing, TLS, logging) delays every other coroutine by as
    long, so the overshoot over the requested sleep is that delay.
    """

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.spikes: list[list[float]] = []
        self.asleep_since = time.perf_counter()
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        while not self._stopped.is_set():
            self.asleep_since = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_SLEEP_SECONDS)
            self._record(time.perf_counter() - self.asleep_since - LAG_PROBE_SLEEP_SECONDS)

    def _record(self, lag: float) -> None:
        self.lags.append(lag)
        if lag > LAG_SPIKE_SECONDS:
            self.spikes.append([time.time(), lag])

    def record_current_sleep(self) -> None:
        """Count the sleep in progress as a lag, for a watch stopped while the loop is busy."""
        self._record(max(0.0, time.perf_counter() - self.asleep_since - LAG_PROBE_SLEEP_SECONDS))

    def stop(self) -> None:
        self._stopped.set()

    def percentile(self, fraction: float) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class TcpConnectCounter:
    """Count TCP connections this process opens, by wrapping ``socket.socket.connect``.

    asyncio, and so httpx and aiohttp, and urllib3 all connect through that method. The wrapper
    adds one Python call per connection and nothing per request.
    """

    def __init__(self) -> None:
        self.count = 0
        self._original = socket.socket.connect

    def install(self) -> None:
        original = self._original
        counter = self

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                counter.count += 1
            return original(sock, address)

        socket.socket.connect = connect  # type: ignore[method-assign]


class FullCollectionTimer:
    """Time each collection of the oldest generation, which pauses every coroutine of the loop."""

    def __init__(self, collections: list[list[float]]) -> None:
        self.collections = collections
        self._started = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections.append([time.time(), time.perf_counter() - self._started])


async def _sample(samples: list[list[float]], stopped: asyncio.Event) -> None:
    while not stopped.is_set():
        samples.append([time.time(), time.process_time(), current_rss_kib()])
        try:
            await asyncio.wait_for(stopped.wait(), SAMPLE_INTERVAL_SECONDS)
        except asyncio.TimeoutError:
            pass
    samples.append([time.time(), time.process_time(), current_rss_kib()])


async def _measure_probe_cost(seconds: float) -> float:
    """Run the lag probe and the sampler alone for ``seconds`` and return the CPU seconds they use per second."""
    probe = LagProbe()
    stopped = asyncio.Event()
    tasks = [asyncio.create_task(probe.run()), asyncio.create_task(_sample([], stopped))]
    before = time.process_time()
    await asyncio.sleep(seconds)
    cost = time.process_time() - before
    probe.stop()
    stopped.set()
    await asyncio.gather(*tasks)
    return cost / seconds


class Watch:
    """One watch of many triggers, with the probes that measure it."""

    def __init__(self, run_ids: list[str], trigger_file: str, output: Path) -> None:
        self.run_ids = run_ids
        self.output = output
        self.result = WatchResult(runs=len(run_ids), trigger_file=trigger_file)
        self.probe = LagProbe()
        self.connects = TcpConnectCounter()
        self.cpu_before = 0.0

    async def run(self, make_trigger: Callable[[str], Trigger]) -> None:
        result = self.result
        stopped = asyncio.Event()
        probe_task = asyncio.create_task(self.probe.run())
        sampler_task = asyncio.create_task(_sample(result.samples, stopped))

        loop_type = type(asyncio.get_running_loop())
        result.event_loop = f"{loop_type.__module__}.{loop_type.__qualname__}"
        result.started_at = time.time()
        self.cpu_before = time.process_time()
        await asyncio.gather(*(self._watch_one(run_id, make_trigger(run_id)) for run_id in self.run_ids))
        result.cpu_seconds_total = time.process_time() - self.cpu_before
        result.finished_at = time.time()

        self.probe.stop()
        stopped.set()
        await asyncio.gather(probe_task, sampler_task)

    async def _watch_one(self, run_id: str, trigger: Trigger) -> None:
        try:
            async for event in trigger.run():
                # Both triggers yield exactly one event and then return.
                self.result.events.setdefault(run_id, [time.time(), event.payload.get("status")])
        except Exception as error:  # a trigger that raises must not stop the other runs' measurement
            self.result.errors[run_id] = f"{type(error).__name__}: {error}"
        finally:
            cleanup = getattr(trigger, "cleanup", None)
            if cleanup is not None:
                await cleanup()

    def finish(self) -> None:
        """Fill in the summary figures and write the result file."""
        result = self.result
        result.lag_max_seconds = max(self.probe.lags, default=0.0)
        result.lag_p99_seconds = self.probe.percentile(0.99)
        result.lag_samples = len(self.probe.lags)
        result.lag_spikes = self.probe.spikes
        result.peak_rss_after_kib = peak_rss_kib()
        result.tcp_connects = self.connects.count
        result.write(self.output)

    def stop_on_sigterm(self, signal_number: int, frame: FrameType | None) -> None:
        """Write what was measured so far and exit with code 3.

        Python runs this handler between two bytecodes of the main thread, so it also runs while
        the triggers keep the event loop busy, which is when a watch overruns.
        """
        result = self.result
        result.stopped_early = True
        result.finished_at = time.time()
        result.cpu_seconds_total = time.process_time() - self.cpu_before
        result.samples.append([time.time(), time.process_time(), current_rss_kib()])
        self.probe.record_current_sleep()
        self.finish()
        os._exit(STOPPED_EARLY_EXIT_CODE)


def watch_triggers(
    make_trigger: Callable[[str], Trigger], run_ids: list[str], *, start_at: float, output: Path, trigger_file: str
) -> WatchResult:
    """Run one trigger per run id in one event loop until each yields its event, and write the result.

    The caller imports the trigger's module before calling, so the memory baseline taken here
    already contains the provider and Airflow. Triggers start together at ``start_at`` (epoch seconds)
    so that the caller can line the watch up with the runs' schedule. While it waits, it measures
    the CPU cost of its own probes. On SIGTERM the figures measured so far are written, marked
    ``stopped_early``.
    """
    watch = Watch(run_ids, trigger_file, output)
    watch.connects.install()
    FullCollectionTimer(watch.result.full_collections).install()
    signal.signal(signal.SIGTERM, watch.stop_on_sigterm)
    watch.result.peak_rss_before_kib = peak_rss_kib()
    if start_at - time.time() > PROBE_CALIBRATION_SECONDS + 0.5:
        watch.result.probe_cpu_per_second = asyncio.run(_measure_probe_cost(PROBE_CALIBRATION_SECONDS))
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    asyncio.run(watch.run(make_trigger))
    watch.finish()
    return watch.result


def read_run_ids(path: Path) -> list[str]:
    """Read the run ids that ``trigger_scale.py`` wrote, one JSON list."""
    return [str(run_id) for run_id in json.loads(path.read_text(encoding="utf-8"))]
