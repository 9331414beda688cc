"""Provider registration: metadata schema, entry point and connection form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from airflow_provider_pad.get_provider_info import get_provider_info
from airflow_provider_pad.hooks.dataverse import DataverseHook

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_provider_info_matches_airflow_schema():
    import airflow

    schema_path = Path(airflow.__file__).with_name("provider_info.schema.json")

    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_form_field_behaviour_from_metadata():
    behaviour = DataverseHook.get_ui_field_behaviour()

    assert behaviour["relabeling"]["host"] == "Environment URL"
    assert behaviour["relabeling"]["login"] == "Client ID"
    assert behaviour["relabeling"]["password"] == "Client secret"
    assert "port" in behaviour["hidden_fields"]


def test_form_lists_extra_fields():
    fields = get_provider_info()["connection-types"][0]["conn-fields"]

    assert {"tenant_id", "authority", "verify", "api_version", "environment_id", "portal_url"} <= set(fields)


def test_airflow_lists_provider_and_hook():
    providers = subprocess.run([AIRFLOW, "providers", "list", "-o", "json"], capture_output=True, text=True, timeout=120)
    hooks = subprocess.run([AIRFLOW, "providers", "hooks", "-o", "json"], capture_output=True, text=True, timeout=120)

    assert providers.returncode == 0, providers.stderr[-2000:]
    assert "airflow-provider-pad" in providers.stdout
    assert hooks.returncode == 0, hooks.stderr[-2000:]
    assert "dataverse" in hooks.stdout
    assert "airflow_provider_pad.hooks.dataverse.DataverseHook" in hooks.stdout
