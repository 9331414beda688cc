"""Helpers that talk to a running emulator the way a Dataverse client does: requests over HTTPS."""

from __future__ import annotations

import time
from typing import Any

import requests

from airflow_provider_pad.emulator import DataverseEmulator

QUEUE_SECONDS = 0.1
RUN_SECONDS = 0.1
WEB_API_PATH = "/api/data/v9.2"
POLL_INTERVAL_SECONDS = 0.02


def request_token(emulator: DataverseEmulator, **overrides: str) -> str:
    """Get an access token with the client credentials grant, posting the form as MSAL does."""
    response = post_token_form(emulator, **overrides)
    response.raise_for_status()
    return response.json()["access_token"]


def post_token_form(emulator: DataverseEmulator, tenant: str | None = None, **overrides: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "scope": f"{emulator.base_url}/.default",
        **overrides,
    }
    form = {name: value for name, value in form.items() if value is not None}
    url = f"{emulator.base_url}/{tenant or emulator.tenant_id}/oauth2/v2.0/token"
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=form, verify=emulator.ca_path, timeout=10)


class WebApiClient:
    """A minimal Dataverse Web API client for the tests: a requests session with a bearer token."""

    def __init__(self, emulator: DataverseEmulator, token: str) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = emulator.ca_path
        self.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
            }
        )

    def __enter__(self) -> WebApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return f"{self.emulator.base_url}{WEB_API_PATH}/{path}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url(path), timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url(path), timeout=10, **kwargs)

    def run(self, workflow_id: str, **body: Any) -> requests.Response:
        """Call RunDesktopFlow. ``body`` defaults to an attended run on a connection named "emulator"."""
        payload = {"runMode": "attended", "connectionName": "emulator", **body}
        return self.post(f"workflows({workflow_id})/Microsoft.Dynamics.CRM.RunDesktopFlow", json=payload)

    def start_run(self, workflow_id: str, **body: Any) -> str:
        response = self.run(workflow_id, **body)
        response.raise_for_status()
        return response.json()["flowsessionId"]

    def session_row(self, flowsession_id: str) -> dict[str, Any]:
        response = self.get(f"flowsessions({flowsession_id})")
        response.raise_for_status()
        return response.json()

    def wait_for_end(self, flowsession_id: str, timeout_seconds: float = 5.0) -> tuple[dict[str, Any], list[int]]:
        """Poll a run until it has ``completedon``. Return the last row and every distinct statuscode seen."""
        deadline = time.monotonic() + timeout_seconds
        seen: list[int] = []
        while True:
            row = self.session_row(flowsession_id)
            if not seen or seen[-1] != row["statuscode"]:
                seen.append(row["statuscode"])
            if row["completedon"] is not None:
                return row, seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Run {flowsession_id} did not end within {timeout_seconds} s. Statuses seen: {seen}."
                )
            time.sleep(POLL_INTERVAL_SECONDS)


def collect_pages(client: WebApiClient, first_url: str, headers: dict[str, str]) -> list[dict]:
    """Follow @odata.nextLink unchanged, as a Dataverse client must, and return every page body."""
    pages = []
    url = first_url
    while url:
        response = client.session.get(url, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url = pages[-1].get("@odata.nextLink")
    return pages
