"""Measure what importing an operator module adds to DAG parsing on top of ``airflow.sdk``, beside three peers.

A process that parses a DAG file imports the module of each operator the file uses. Before
Airflow 3.3.2's DAG processor starts a parsing process, its parent imports the modules whose
names start with ``airflow.`` (option ``[dag_processor] parsing_pre_import_modules``). The peers'
modules are therefore usually inherited, while ``airflow_provider_pad`` modules are imported in
every parsing process.

Each sample runs in a new Python process that first imports ``airflow.sdk`` (which already loads
``BaseOperator``), then times the import of one operator module and reads the growth of its
resident set size (VmRSS). The modules are measured in turn, round-robin, so a slow moment of the
machine spreads over all of them. One discarded warm-up import per module writes the bytecode
caches first.

Run it with the provider's virtualenv, from the repository root::

    .venv/bin/python benchmarks/parse_cost.py            # 15 samples per module
    .venv/bin/python benchmarks/parse_cost.py --quick    # 3 samples per module

The peers' modules come from the peers' virtualenv (docs/benchmarks.md shows how to create it).
The provider's module is measured in both virtualenvs: in ``.venv``, where it is installed, and in
the peers' one through ``PYTHONPATH``, so that its figure can be compared in the same environment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from provider_source import ProviderSource, choose_source

BENCHMARKS_DIRECTORY = Path(__file__).resolve().parent
DEFAULT_PEERS_PYTHON = BENCHMARKS_DIRECTORY / ".venv-peers" / "bin" / "python"
SAMPLES = 15
QUICK_SAMPLES = 3
SAMPLE_TIMEOUT_SECONDS = 120
TARGET_MILLISECONDS = 30.0

PROVIDER_MODULE = "airflow_provider_pad.operators.desktop_flow"
PEER_MODULES = {
    "dbt Cloud": "airflow.providers.dbt.cloud.operators.dbt",
    "Databricks": "airflow.providers.databricks.operators.databricks",
    "Azure Data Factory": "airflow.providers.microsoft.azure.operators.data_factory",
}

# Runs in the child process: argv[1] is the module to import. Prints one JSON object.
SAMPLE_SCRIPT = """
import importlib, json, sys, time

def rss_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

started = time.perf_counter()
import airflow.sdk
sdk_seconds = time.perf_counter() - started

rss_before = rss_kib()
cpu_started = time.process_time()
started = time.perf_counter()
importlib.import_module(sys.argv[1])
seconds = time.perf_counter() - started
cpu_seconds = time.process_time() - cpu_started
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_kib": rss_kib() - rss_before, "sdk_seconds": sdk_seconds}))
"""


@dataclass
class Subject:
    """One module measured with one Python."""

    name: str
    module: str
    python: Path
    environment: dict[str, str]
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    sdk_seconds: list[float] = field(default_factory=list)


def sample(subject: Subject) -> dict[str, float]:
    completed = subprocess.run(
        [str(subject.python), "-c", SAMPLE_SCRIPT, subject.module],
        env=subject.environment,
        # Not the repository: "python -c" puts the working directory first on sys.path.
        cwd=subject.environment["AIRFLOW_HOME"],
        capture_output=True,
        text=True,
        timeout=SAMPLE_TIMEOUT_SECONDS,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"Importing {subject.module} with {subject.python} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    lower, _, upper = statistics.quantiles(values, n=4, method="inclusive")
    return lower, upper


def build_subjects(arguments: argparse.Namespace, source: ProviderSource, airflow_home: Path) -> list[Subject]:
    environment = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "HOME": str(airflow_home),
    }
    provider_path = source.environment.get("PYTHONPATH", str(BENCHMARKS_DIRECTORY.parent))
    subjects = [Subject("this provider (.venv)", PROVIDER_MODULE, Path(sys.executable), environment | source.environment)]
    if not arguments.no_peer:
        peers = arguments.peers_python
        subjects.append(Subject("this provider (peers venv)", PROVIDER_MODULE, peers, environment | {"PYTHONPATH": provider_path}))
        subjects += [Subject(name, module, peers, dict(environment)) for name, module in PEER_MODULES.items()]
    return subjects


def print_report(subjects: list[Subject], samples: int) -> None:
    header = [
        "module", "median ms", "min-max ms", "IQR ms", "CPU median ms", "median RSS KiB", "min-max RSS KiB", "airflow.sdk ms",
    ]
    rows = []
    for subject in subjects:
        milliseconds = [value * 1000 for value in subject.seconds]
        low, high = quartiles(milliseconds)
        rows.append([
            subject.name,
            f"{statistics.median(milliseconds):.1f}",
            f"{min(milliseconds):.1f}-{max(milliseconds):.1f}",
            f"{low:.1f}-{high:.1f}",
            f"{statistics.median(subject.cpu_seconds) * 1000:.1f}",
            f"{statistics.median(subject.rss_kib):.0f}",
            f"{min(subject.rss_kib)}-{max(subject.rss_kib)}",
            f"{statistics.median(subject.sdk_seconds) * 1000:.0f}",
        ])
    widths = [max(len(header[column]), *(len(row[column]) for row in rows)) for column in range(len(header))]
    print(f"\nImport cost on top of airflow.sdk, {samples} fresh processes per module")
    print("  ".join(name.ljust(widths[0]) if index == 0 else name.rjust(widths[index]) for index, name in enumerate(header)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(cell.ljust(widths[0]) if index == 0 else cell.rjust(widths[index]) for index, cell in enumerate(row)))

    ours = statistics.median(subjects[0].seconds) * 1000
    verdict = "met" if ours < TARGET_MILLISECONDS else "NOT met"
    print(f"\nTarget: importing {PROVIDER_MODULE} adds under {TARGET_MILLISECONDS:.0f} ms: median {ours:.1f} ms, {verdict}.")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SAMPLES} samples per module instead of {SAMPLES}")
    parser.add_argument("--samples", type=int, help=f"fresh processes per module (default: {SAMPLES})")
    parser.add_argument("--no-peer", action="store_true", help="measure only this provider's module")
    parser.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON, help="Python of the peers' virtualenv (default: %(default)s)")
    parser.add_argument("--provider-ref", help="measure this git commit or branch of the provider instead of the work tree")
    arguments = parser.parse_args()
    arguments.samples = arguments.samples or (QUICK_SAMPLES if arguments.quick else SAMPLES)
    if not arguments.no_peer and not arguments.peers_python.exists():
        parser.error(
            f"{arguments.peers_python} does not exist. Create the peers' virtualenv as docs/benchmarks.md shows, "
            "or pass --no-peer."
        )
    return arguments


def main() -> None:
    arguments = parse_arguments()
    directory = Path(tempfile.mkdtemp(prefix="parse-cost-"))
    try:
        source = choose_source(arguments.provider_ref, directory)
        airflow_home = directory / "airflow-home"
        airflow_home.mkdir()
        subjects = build_subjects(arguments, source, airflow_home)
        print(f"provider: {source.label}")

        for subject in subjects:
            sample(subject)  # warm-up: writes airflow.cfg and the bytecode caches
        for index in range(arguments.samples):
            print(f"  round {index + 1} of {arguments.samples}", file=sys.stderr, flush=True)
            for subject in subjects:
                figures = sample(subject)
                subject.seconds.append(figures["seconds"])
                subject.cpu_seconds.append(figures["cpu_seconds"])
                subject.rss_kib.append(figures["rss_kib"])
                subject.sdk_seconds.append(figures["sdk_seconds"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_report(subjects, arguments.samples)


if __name__ == "__main__":
    main()
