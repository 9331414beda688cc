"""Register the ``standalone`` marker and add the Airflow home and logs to the report of a failed test."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "standalone: system test that starts a real Airflow (scheduler, triggerer, DAG processor, API server) "
        "and the Dataverse emulator as processes; takes several minutes",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    components = getattr(item, "funcargs", {}).get("airflow_components")
    if report.failed and components is not None:
        report.sections.append(("Airflow home and logs", components.describe(logs=())))
    return report
