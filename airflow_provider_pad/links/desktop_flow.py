"""Operator extra links from a task to its desktop flow and run in the Power Automate portal.

The operator stores each URL in XCom under the link's ``xcom_key`` when the run starts. The Airflow 3
API server reads the links from there, so they work while the task is still waiting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

PUBLIC_PORTAL = "https://make.powerautomate.com"
# Power Automate portals of the clouds whose Dataverse hosts differ from the public cloud's, keyed by
# the Dataverse host suffix (Microsoft's "Power Automate US Government" and 21Vianet pages).
PORTALS_BY_DATAVERSE_SUFFIX = {
    ".crm9.dynamics.com": "https://make.gov.powerautomate.us",
    ".crm.microsoftdynamics.us": "https://make.high.powerautomate.us",
    ".crm.appsplatform.us": "https://make.powerautomate.appsplatform.us",
    ".crm.dynamics.cn": "https://make.powerautomate.cn",
}


def portal_for_environment(environment_url: str) -> str:
    """Return the Power Automate portal origin of the cloud a Dataverse environment belongs to."""
    host = (urlsplit(environment_url).hostname or "").lower()
    for suffix, portal in PORTALS_BY_DATAVERSE_SUFFIX.items():
        if host.endswith(suffix):
            return portal
    return PUBLIC_PORTAL


def flow_details_url(portal: str, environment_id: str, flow_id: str) -> str:
    """Return the URL of a desktop flow's details page (documented by Microsoft)."""
    return f"{portal}/manage/environments/{environment_id}/uiflows/{flow_id}/details"


def flow_run_url(portal: str, environment_id: str, flow_id: str, flow_session_id: str) -> str:
    """Return the URL of one run's page.

    NOTE: Microsoft documents no URL for a run's page; this is the form the portal uses today.
    """
    return f"{portal}/environments/{environment_id}/uiflows/{flow_id}/runs/{flow_session_id}"


class _StoredUrlLink(BaseOperatorLink):
    """A link whose URL the operator stored in XCom under :attr:`xcom_key`."""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


class DesktopFlowRunLink(_StoredUrlLink):
    """Link to the run's page in the Power Automate portal."""

    name = "Desktop flow run"


class DesktopFlowLink(_StoredUrlLink):
    """Link to the desktop flow's details page in the Power Automate portal."""

    name = "Desktop flow"
