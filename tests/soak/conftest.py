"""Register the ``soak`` marker."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soak: hundreds of operator runs with injected faults against one Dataverse emulator; "
        "select alone with -m soak, skip with -m 'not soak'",
    )
