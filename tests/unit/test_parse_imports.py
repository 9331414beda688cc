"""Importing the operator, sensor and trigger modules (as DAG parsing does) loads no HTTP machinery."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import airflow.sdk
before = set(sys.modules)
import airflow_provider_pad.operators.desktop_flow
import airflow_provider_pad.sensors.desktop_flow
import airflow_provider_pad.triggers.desktop_flow
print(json.dumps(sorted(set(sys.modules) - before)))
"""
FORBIDDEN_PREFIXES = (
    "msal",
    "requests",
    "httpx",
    "httpcore",
    "urllib3",
    "uvicorn",
    "starlette",
    "cryptography",
    "airflow_provider_pad.hooks",
    "airflow_provider_pad.emulator",
)


def test_parse_time_imports_stay_light():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    added = json.loads(result.stdout.strip().splitlines()[-1])

    heavy = [name for name in added if name.startswith(FORBIDDEN_PREFIXES)]
    assert heavy == []
    assert "airflow_provider_pad.operators.desktop_flow" in added
