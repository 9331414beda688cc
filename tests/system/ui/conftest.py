"""Register the ``ui`` marker and add the Airflow logs and Chromium's log to the report of a failed test."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ui: system test that starts a real Airflow and the Dataverse emulator as processes and drives "
        "the Airflow UI in headless Chromium; takes about two minutes",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if not report.failed:
        return report
    fixtures = getattr(item, "funcargs", {})
    components = fixtures.get("airflow_components")
    if components is not None:
        report.sections.append(("Airflow home and logs", components.describe(logs=())))
    browser = fixtures.get("chromium")
    if browser is not None:
        report.sections.append((f"Tail of {browser.log_path}", browser.log_tail()))
    return report
