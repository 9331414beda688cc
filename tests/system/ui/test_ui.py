"""System tests of the provider in Airflow's UI: the connection test, the connection form and the extra links.

The module starts the Dataverse emulator and a real Airflow (scheduler, DAG processor, triggerer and
API server on SQLite, from the standalone harness) with the repository's example DAGs once. The
connection tests go through the API server's REST API, and the form and link tests drive the React
UI in headless Debian Chromium. Each browser test saves a screenshot to the folder it prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_provider_pad.emulator import DESKTOP_FLOW_1_ID, ENVIRONMENT_ID
from airflow_provider_pad.get_provider_info import get_provider_info
from tests.system.standalone.harness import (
    LOCALHOST,
    AirflowComponents,
    AirflowSettings,
    EmulatorProcess,
    free_port,
)
from tests.system.ui.chromium import CHROMIUM, Chromium, Page

REPOSITORY = Path(__file__).resolve().parents[3]
EXAMPLE_DAGS_FOLDER = REPOSITORY / "example_dags"
DAG_ID = "example_desktop_flow_pipeline"
TASK_ID = "enter_invoice"

CONNECTION_TYPE = "dataverse"
CONNECTION_TYPE_LABEL = "Dataverse (Power Automate Desktop)"
TEST_CONNECTION_ID = "ui_test_dataverse"
WRONG_CLIENT_SECRET = "wrong-client-secret-for-the-ui-test"
# The identity platform's error code for a client secret that does not match the app registration.
INVALID_CLIENT_SECRET_CODE = "AADSTS7000215"

# Labels the connection form must show for each field, by the field's name in the form. The extra
# fields appear in the form as inputs named element_<extra key>.
STANDARD_FIELD_LABELS = {"host": "Environment URL", "login": "Client ID", "password": "Client secret"}
EXTRA_FIELD_LABELS = {
    "tenant_id": "Tenant ID",
    "authority": "Authority URL",
    "verify": "CA bundle",
    "api_version": "Web API version",
    "environment_id": "Environment ID",
    "portal_url": "Portal URL",
}
HIDDEN_STANDARD_FIELDS = ("port", "schema")
DEFAULT_STANDARD_LABELS = ("Host", "Login", "Password", "Port", "Schema")

PORTAL = "https://make.powerautomate.com"

# Airflow 3.3.2 can fail a deferred task whose trigger fires before the scheduler has recorded the
# deferral (seen here with a run of 4 s in all). A run that waits 3 s in the emulator's queue and
# then runs 12 s leaves the scheduler that time.
QUEUE_SECONDS = 3
RUN_SECONDS = 12
CHECK_INTERVAL_SECONDS = 1

STARTUP_TIMEOUT_SECONDS = 240
# Time for a triggered task to be scheduled, start its run on a worker and defer.
TASK_START_TIMEOUT_SECONDS = 90
TASK_SUCCESS_TIMEOUT_SECONDS = QUEUE_SECONDS + RUN_SECONDS + 90
PAGE_TIMEOUT_SECONDS = 60
VIEWPORT_WIDTH = 1400
VIEWPORT_HEIGHT = 1000
# The connection form is a fixed dialog, so a screenshot shows only what fits in the viewport.
FORM_VIEWPORT_HEIGHT = 1700

# pytest-timeout counts fixture setup in the first test, so the limit covers starting Airflow too.
pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]


class UiAirflowSettings(AirflowSettings):
    """The standalone harness's settings, plus the Test Connection feature and a short example check interval."""

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        # Airflow 3 disables POST /api/v2/connections/test and the UI's Test button by default.
        environment["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
        environment["PAD_EXAMPLE_CHECK_INTERVAL"] = str(CHECK_INTERVAL_SECONDS)
        return environment


# Fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory):
    emulator = EmulatorProcess(tmp_path_factory.mktemp("emulator"), QUEUE_SECONDS, RUN_SECONDS)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def airflow_components(emulator_process: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory):
    settings = UiAirflowSettings(
        home=tmp_path_factory.mktemp("airflow-home"),
        dags_folder=EXAMPLE_DAGS_FOLDER,
        connection_json=emulator_process.connection_json,
        api_port=free_port(),
        worker_log_server_port=free_port(),
        trigger_log_server_port=free_port(),
    )
    components = AirflowComponents(settings)
    try:
        components.start()
        components.wait_until_ready([DAG_ID], STARTUP_TIMEOUT_SECONDS)
        yield components
    finally:
        components.stop()


@pytest.fixture(scope="module")
def ui_url(airflow_components: AirflowComponents) -> str:
    return f"http://{LOCALHOST}:{airflow_components.settings.api_port}"


@pytest.fixture(scope="module")
def screenshot_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("PAD_SCREENSHOT_DIR")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"Screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium with a fresh profile. Without /usr/bin/chromium the test skips, or fails under CI."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("chromium")
    browser = Chromium(folder / "profile", folder / "chromium.log")
    try:
        yield browser
    finally:
        browser.stop()


@pytest.fixture
def page(chromium: Chromium):
    tab = chromium.new_page(VIEWPORT_WIDTH, VIEWPORT_HEIGHT)
    try:
        yield tab
    finally:
        tab.close()


# Helpers -----------------------------------------------------------------------------------------


def connection_body(emulator: EmulatorProcess, **overrides: Any) -> dict[str, Any]:
    """Return a ConnectionBody for the REST API with the emulator's connection, changed by ``overrides``.

    ``extra`` is a JSON string in the API's ConnectionBody schema, so an ``extra`` override is a dict
    that is merged into the emulator's extras before encoding.
    """
    connection = json.loads(emulator.connection_json)
    extra = {**connection["extra"], **overrides.pop("extra", {})}
    body = {
        "connection_id": TEST_CONNECTION_ID,
        "conn_type": CONNECTION_TYPE,
        "host": connection["host"],
        "login": connection["login"],
        "password": connection["password"],
        "extra": json.dumps(extra),
    }
    body.update(overrides)
    return body


def post_connection_test(airflow: AirflowComponents, body: dict[str, Any]) -> dict[str, Any]:
    """Send POST /api/v2/connections/test and return the response body: ``status`` and ``message``."""
    return airflow.request("POST", "/api/v2/connections/test", json=body)


def closed_port_url() -> str:
    """Return an https URL on 127.0.0.1 whose port nothing listens on now, so connections are refused."""
    return f"https://{LOCALHOST}:{free_port()}"


def button_with_text(text: str, within: str = "document") -> str:
    """Return JavaScript that finds the first button whose visible text is exactly ``text``."""
    return f"[...{within}.querySelectorAll('button')].find(button => button.innerText.trim() === {json.dumps(text)})"


def anchor_with_text(text: str) -> str:
    return f"[...document.querySelectorAll('a')].find(anchor => anchor.innerText.trim() === {json.dumps(text)})"


def anchor_properties(text: str) -> str:
    """Return JavaScript that reads the href, target and visibility of the anchor whose text is ``text``."""
    return (
        f"(anchor => ({{href: anchor.href, target: anchor.target, visible: anchor.checkVisibility()}}))"
        f"({anchor_with_text(text)})"
    )


# Each field of the connection form is a Chakra "field" root with a label, an input or textarea and
# an optional helper text. The extra fields' labels point at no input (their "for" attribute names an
# id the input lacks), so the label and the input are paired through their common field root.
FORM_FIELDS_SCRIPT = """
[...document.querySelectorAll('[role=dialog] [data-part=root][role=group]')].map(root => {
    const label = root.querySelector('label');
    const control = root.querySelector('input, textarea');
    const helper = root.querySelector('[data-part=helper-text]');
    return {
        label: label ? label.innerText.replace('*', '').trim() : null,
        name: control ? control.name : null,
        type: control ? control.type : null,
        placeholder: control ? control.placeholder : null,
        helper: helper ? helper.innerText.trim() : null,
        visible: !!control && control.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}),
    };
})
"""


def visible_form_fields(page: Page) -> dict[str, dict[str, Any]]:
    """Return the connection dialog's visible fields by input name: label, type, placeholder and helper text."""
    return {field["name"]: field for field in page.evaluate(FORM_FIELDS_SCRIPT) if field["visible"] and field["name"]}


def visible_dialog_labels(page: Page) -> list[str]:
    return page.evaluate(
        "[...document.querySelectorAll('[role=dialog] label')]"
        ".filter(label => label.checkVisibility()).map(label => label.innerText.replace('*', '').trim())"
    )


def open_add_connection_form(page: Page, ui_url: str) -> None:
    """Open the Connections page, click Add Connection and pick the Dataverse connection type."""
    page.navigate(f"{ui_url}/connections")
    page.wait_for(button_with_text("Add Connection"), PAGE_TIMEOUT_SECONDS, "the Add Connection button")
    page.click(button_with_text("Add Connection"), "the Add Connection button")

    connection_type_input = "document.querySelector('[role=dialog] input[role=combobox]')"
    page.wait_for(connection_type_input, PAGE_TIMEOUT_SECONDS, "the connection type selector in the dialog")
    page.click(connection_type_input, "the connection type selector")
    page.type_text("Dataverse")
    option = (
        "[...document.querySelectorAll('[role=option]')]"
        f".find(option => option.innerText.trim() === {json.dumps(CONNECTION_TYPE_LABEL)})"
    )
    page.wait_for(option, PAGE_TIMEOUT_SECONDS, f"the connection type option {CONNECTION_TYPE_LABEL!r}")
    page.click(option, f"the connection type option {CONNECTION_TYPE_LABEL!r}")


def wait_for_visible_field(page: Page, name: str) -> None:
    """Wait until the dialog's input named ``name`` is visible and its section has finished opening."""
    page.wait_for(
        f"(control => !!control && control.checkVisibility({{checkOpacity: true, checkVisibilityCSS: true}}))"
        f"(document.querySelector('[role=dialog] [name={name}]'))",
        PAGE_TIMEOUT_SECONDS,
        f"the form field {name!r} to be shown",
    )
    page.wait_for_animations()


def dataverse_connection_type() -> dict[str, Any]:
    (connection_type,) = [
        entry for entry in get_provider_info()["connection-types"] if entry["connection-type"] == CONNECTION_TYPE
    ]
    return connection_type


# Connection test through the API server ---------------------------------------------------------


def test_connection_test_succeeds(airflow_components: AirflowComponents, emulator_process: EmulatorProcess):
    result = post_connection_test(airflow_components, connection_body(emulator_process))

    assert result["status"] is True, result["message"]
    assert emulator_process.base_url in result["message"]


def test_connection_test_rejects_wrong_secret(
    airflow_components: AirflowComponents, emulator_process: EmulatorProcess
):
    result = post_connection_test(airflow_components, connection_body(emulator_process, password=WRONG_CLIENT_SECRET))

    assert result["status"] is False, result["message"]
    assert INVALID_CLIENT_SECRET_CODE in result["message"]
    assert WRONG_CLIENT_SECRET not in result["message"]


def test_connection_test_reports_unreachable_host(
    airflow_components: AirflowComponents, emulator_process: EmulatorProcess
):
    # The token's scope is <environment URL>/.default, and the emulator issues tokens only for its own
    # URL. With the emulator as the authority, a closed environment URL fails at the token request
    # (AADSTS70011) and is never connected to. So both point at the closed port here, and the first
    # request, for the authority's OpenID configuration, is refused.
    unreachable = closed_port_url()
    body = connection_body(emulator_process, host=unreachable, extra={"authority": f"{unreachable}/tenant"})

    result = post_connection_test(airflow_components, body)

    assert result["status"] is False, result["message"]
    assert unreachable in result["message"]
    assert "could not be reached" in result["message"]
    assert body["password"] not in result["message"]


# Connection form in the browser ------------------------------------------------------------------


def test_connection_form_shows_dataverse_fields(page: Page, ui_url: str, screenshot_folder: Path):
    connection_type = dataverse_connection_type()
    behaviour = connection_type["ui-field-behaviour"]
    extra_fields = connection_type["conn-fields"]
    page.set_viewport(VIEWPORT_WIDTH, FORM_VIEWPORT_HEIGHT)
    open_add_connection_form(page, ui_url)

    # Standard Fields is the section that the dialog opens expanded.
    wait_for_visible_field(page, "host")
    standard = visible_form_fields(page)
    standard_labels = visible_dialog_labels(page)
    page.screenshot(screenshot_folder / "connection-form-standard-fields.png")

    page.click(button_with_text("Extra Fields", "document.querySelector('[role=dialog]')"), "Extra Fields")
    wait_for_visible_field(page, "element_tenant_id")
    extra = visible_form_fields(page)
    page.screenshot(screenshot_folder / "connection-form-extra-fields.png")

    for name, label in STANDARD_FIELD_LABELS.items():
        assert name in standard, f"No visible {name} field in the form; visible fields: {sorted(standard)}"
        assert standard[name]["label"] == label
        assert standard[name]["placeholder"] == behaviour["placeholders"][name]
    assert standard["password"]["type"] == "password"
    for name in HIDDEN_STANDARD_FIELDS:
        assert name not in standard, f"The {name} field is shown, but the provider hides it."
    for label in DEFAULT_STANDARD_LABELS:
        assert label not in standard_labels, f"The form shows Airflow's default label {label!r}."

    assert set(EXTRA_FIELD_LABELS) == set(extra_fields), "The test's extra fields differ from the provider's."
    for name, label in EXTRA_FIELD_LABELS.items():
        field = extra.get(f"element_{name}")
        assert field is not None, f"No visible field for extra {name}; visible fields: {sorted(extra)}"
        assert field["label"] == label
        assert field["helper"] == extra_fields[name]["description"]


# Extra links -------------------------------------------------------------------------------------


def test_extra_links_point_to_portal(
    airflow_components: AirflowComponents, page: Page, ui_url: str, screenshot_folder: Path
):
    airflow_components.unpause(DAG_ID)
    run_id = airflow_components.trigger(DAG_ID)
    links_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{TASK_ID}/links"

    # The operator stores the links when the run starts, so they work while the task waits deferred.
    airflow_components.wait_for_task_state(DAG_ID, run_id, TASK_ID, {"deferred"}, TASK_START_TIMEOUT_SECONDS)
    flow_session_id = airflow_components.xcom(DAG_ID, run_id, TASK_ID, "flow_session_id")
    assert flow_session_id, f"Task {TASK_ID} pushed no flow_session_id.\n{airflow_components.describe(DAG_ID)}"
    flow_path = f"environments/{ENVIRONMENT_ID}/uiflows/{DESKTOP_FLOW_1_ID}"
    expected = {
        "Desktop flow": f"{PORTAL}/manage/{flow_path}/details",
        "Desktop flow run": f"{PORTAL}/{flow_path}/runs/{flow_session_id}",
    }
    assert airflow_components.request("GET", links_path)["extra_links"] == expected

    airflow_components.wait_for_task_state(DAG_ID, run_id, TASK_ID, {"success"}, TASK_SUCCESS_TIMEOUT_SECONDS)
    links = airflow_components.request("GET", links_path)["extra_links"]
    assert links["Desktop flow"] == expected["Desktop flow"]
    assert links["Desktop flow run"] == expected["Desktop flow run"]
    assert airflow_components.xcom(DAG_ID, run_id, TASK_ID, "_link_DesktopFlowLink") == expected["Desktop flow"]
    assert airflow_components.xcom(DAG_ID, run_id, TASK_ID, "_link_DesktopFlowRunLink") == expected["Desktop flow run"]

    # The task instance page opens on its Logs tab. Its Details tab, at .../details, shows the extra links.
    page.navigate(f"{ui_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{TASK_ID}/details")
    for name in expected:
        page.wait_for(anchor_with_text(name), PAGE_TIMEOUT_SECONDS, f"the {name!r} link button")
    rendered_links = {name: page.evaluate(anchor_properties(name)) for name in expected}
    page.screenshot(screenshot_folder / "task-instance-extra-links.png")

    for name, url in expected.items():
        assert rendered_links[name]["visible"], f"The {name!r} link button is not visible."
        assert rendered_links[name]["href"] == url
        assert rendered_links[name]["target"] == "_blank"
