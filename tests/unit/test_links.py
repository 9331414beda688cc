from __future__ import annotations

import pytest

from airflow_provider_pad.links.desktop_flow import PUBLIC_PORTAL, flow_details_url, portal_for_environment


@pytest.mark.parametrize(
    ("environment_url", "portal"),
    [
        ("https://contoso.crm.dynamics.com", PUBLIC_PORTAL),
        ("https://contoso.crm4.dynamics.com", PUBLIC_PORTAL),
        ("https://agency.crm9.dynamics.com", "https://make.gov.powerautomate.us"),
        ("https://agency.crm.microsoftdynamics.us", "https://make.high.powerautomate.us"),
        ("https://agency.crm.appsplatform.us", "https://make.powerautomate.appsplatform.us"),
        ("https://contoso.crm.dynamics.cn", "https://make.powerautomate.cn"),
    ],
)
def test_portal_follows_cloud(environment_url, portal):
    assert portal_for_environment(environment_url) == portal


def test_flow_details_url():
    url = flow_details_url(PUBLIC_PORTAL, "env-1", "flow-2")

    assert url == "https://make.powerautomate.com/manage/environments/env-1/uiflows/flow-2/details"
