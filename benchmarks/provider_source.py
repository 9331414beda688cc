"""Choose which version of the provider a benchmark measures, and label the figures with it.

By default the benchmarks measure the provider that the running Python imports, which for the
repository's ``.venv`` is the editable install of the work tree. With a git ref they measure that
commit instead: its ``airflow_provider_pad`` folder is exported with ``git archive`` into a
scratch folder that the child processes find first on ``PYTHONPATH``. The work tree and the git
index are only read.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE = "airflow_provider_pad"


@dataclass(frozen=True)
class ProviderSource:
    """A label for the measured code, and the environment variables that make child processes import it."""

    label: str
    environment: dict[str, str] = field(default_factory=dict)


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPOSITORY), *arguments], check=True, capture_output=True, text=True
    ).stdout.strip()


def work_tree_source() -> ProviderSource:
    """Describe the work tree: the commit it is at, and whether the provider package has uncommitted changes."""
    commit = _git("rev-parse", "--short", "HEAD")
    changes = _git("status", "--porcelain", "--", PACKAGE)
    label = f"work tree at {commit}"
    if changes:
        label += f" with uncommitted changes to {PACKAGE}/"
    return ProviderSource(label)


def exported_source(ref: str, directory: Path) -> ProviderSource:
    """Export ``ref``'s provider package into ``directory`` and return the source that imports it."""
    commit = _git("rev-parse", "--short", f"{ref}^{{commit}}")
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", "--format=tar", commit, PACKAGE], check=True, capture_output=True
    ).stdout
    target = directory / f"provider-{commit}"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return ProviderSource(f"commit {commit}", {"PYTHONPATH": str(target)})


def choose_source(ref: str | None, directory: Path) -> ProviderSource:
    return exported_source(ref, directory) if ref else work_tree_source()
