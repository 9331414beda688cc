from __future__ import annotations

import pytest

from airflow_provider_pad.flowsession import FlowSession, FlowSessionStatus, RunOutcome, status_label

EXPECTED_OUTCOMES = {
    0: RunOutcome.RUNNING,
    1: RunOutcome.RUNNING,
    2: RunOutcome.RUNNING,
    3: RunOutcome.RUNNING,
    4: RunOutcome.SUCCESS,
    5: RunOutcome.FAILED,
    6: RunOutcome.RUNNING,
    7: RunOutcome.CANCELLED,
    8: RunOutcome.FAILED,
    9: RunOutcome.FAILED,
    10: RunOutcome.FAILED,
    11: RunOutcome.FAILED,
    12: RunOutcome.FAILED,
    13: RunOutcome.FAILED,
    14: RunOutcome.FAILED,
}


def test_every_documented_status_is_mapped():
    assert sorted(EXPECTED_OUTCOMES) == [status.value for status in FlowSessionStatus]


@pytest.mark.parametrize(("statuscode", "outcome"), sorted(EXPECTED_OUTCOMES.items()))
def test_status_outcome(statuscode, outcome):
    assert FlowSession("id", statuscode).outcome == outcome


@pytest.mark.parametrize("statuscode", [15, -1, None, 99])
def test_unknown_status_is_error(statuscode):
    session = FlowSession("id", statuscode)

    assert session.outcome == RunOutcome.ERROR
    assert session.has_ended


@pytest.mark.parametrize(
    ("statuscode", "label"),
    [(0, "NotSpecified"), (3, "Waiting"), (4, "Succeeded"), (10, "TimedOut"), (99, "unknown status 99")],
)
def test_status_labels(statuscode, label):
    assert status_label(statuscode) == label


def test_from_row_reads_error_columns():
    row = {"statuscode": 8, "statecode": 0, "errorcode": "NoCandidateMachine", "errormessage": "No machine."}

    session = FlowSession.from_row("abc", row)

    assert session.errorcode == "NoCandidateMachine"
    assert session.errormessage == "No machine."
    assert session.flow_session_id == "abc"
