"""Fixtures for the emulator's own tests: a fresh emulator, an access token and a Web API client."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_pad.emulator import DataverseEmulator
from tests.emulator.webapi import QUEUE_SECONDS, RUN_SECONDS, WebApiClient, request_token


@pytest.fixture(scope="module")
def shared_emulator():
    """One emulator per test module with a short run schedule, because each start and stop takes about 0.2 s."""
    with DataverseEmulator(queue_seconds=QUEUE_SECONDS, run_seconds=RUN_SECONDS) as emu:
        yield emu


@pytest.fixture
def emulator(shared_emulator: DataverseEmulator):
    """The module's emulator with an empty request log and no queued faults. Runs and flows carry over."""
    shared_emulator.clear_faults()
    shared_emulator.reset_log()
    yield shared_emulator
    shared_emulator.clear_faults()


@pytest.fixture
def token(emulator: DataverseEmulator) -> str:
    return request_token(emulator)


@pytest.fixture
def client(emulator: DataverseEmulator, token: str):
    with WebApiClient(emulator, token) as web_api:
        yield web_api


@pytest.fixture
def http(emulator: DataverseEmulator):
    """A requests session that trusts the emulator's CA and ignores REQUESTS_CA_BUNDLE and proxies."""
    with requests.Session() as session:
        session.trust_env = False
        session.verify = emulator.ca_path
        yield session
