"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

PACKAGE_NAME = "airflow-provider-pad"
VERSION = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Return the provider description that Airflow's providers manager validates and registers."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Power Automate Desktop",
        "description": "Run Microsoft Power Automate Desktop flows through the Dataverse Web API.",
        "versions": [VERSION],
        "integrations": [
            {
                "integration-name": "Power Automate Desktop",
                "external-doc-url": "https://learn.microsoft.com/power-automate/developer/desktop-flow-public-apis",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Power Automate Desktop",
                "python-modules": ["airflow_provider_pad.hooks.dataverse"],
            }
        ],
        "operators": [
            {
                "integration-name": "Power Automate Desktop",
                "python-modules": ["airflow_provider_pad.operators.desktop_flow"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Power Automate Desktop",
                "python-modules": ["airflow_provider_pad.sensors.desktop_flow"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Power Automate Desktop",
                "python-modules": ["airflow_provider_pad.triggers.desktop_flow"],
            }
        ],
        "extra-links": [
            "airflow_provider_pad.links.desktop_flow.DesktopFlowLink",
            "airflow_provider_pad.links.desktop_flow.DesktopFlowRunLink",
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_pad.hooks.dataverse.DataverseHook",
                "connection-type": "dataverse",
                "hook-name": "Dataverse (Power Automate Desktop)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "Environment URL",
                        "login": "Client ID",
                        "password": "Client secret",
                    },
                    "placeholders": {
                        "host": "https://contoso.crm.dynamics.com",
                        "login": "00000000-0000-0000-0000-000000000000",
                        "password": "client secret of the app registration",
                        "tenant_id": "00000000-0000-0000-0000-000000000000",
                        "authority": "https://login.microsoftonline.com/<tenant id>",
                        "verify": "/path/to/ca-bundle.pem",
                        "api_version": "v9.2",
                        "environment_id": "Power Platform environment id (optional)",
                        "portal_url": "https://make.powerautomate.com",
                    },
                },
                "conn-fields": {
                    "tenant_id": {
                        "label": "Tenant ID",
                        "description": "Directory (tenant) id of the app registration.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "authority": {
                        "label": "Authority URL",
                        "description": "Optional. Defaults to https://login.microsoftonline.com/<tenant id>.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "verify": {
                        "label": "CA bundle",
                        "description": "Optional path to a CA bundle for TLS verification, or false.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "api_version": {
                        "label": "Web API version",
                        "description": "Dataverse Web API version. Default v9.2.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "environment_id": {
                        "label": "Environment ID",
                        "description": "Optional. Power Platform environment id for the portal links; "
                        "read from Dataverse when empty.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "portal_url": {
                        "label": "Portal URL",
                        "description": "Optional. Power Automate portal origin for the links; derived "
                        "from the environment URL's cloud when empty.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
