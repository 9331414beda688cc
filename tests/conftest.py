"""Shared fixtures: a throwaway Airflow home and the Dataverse emulator over real HTTPS."""

from __future__ import annotations

import os
import tempfile

# Airflow reads its configuration when first imported, so point it at a throwaway home first.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="pad-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest  # noqa: E402

from airflow_provider_pad.emulator import DataverseEmulator  # noqa: E402
from airflow_provider_pad.hooks import credentials  # noqa: E402

# Short run schedule so a run goes Waiting -> Running -> outcome in under a second.
QUEUE_SECONDS = 0.3
RUN_SECONDS = 0.4


@pytest.fixture
def emulator():
    """A fresh emulator per test, so request counts and runs never leak between tests."""
    with DataverseEmulator(queue_seconds=QUEUE_SECONDS, run_seconds=RUN_SECONDS) as emu:
        yield emu


@pytest.fixture
def dataverse(emulator, monkeypatch):
    """The emulator, configured as the ``dataverse_default`` connection, with no cached MSAL app."""
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", emulator.connection_json())
    credentials.clear_client_applications()
    yield emulator
    credentials.clear_client_applications()
