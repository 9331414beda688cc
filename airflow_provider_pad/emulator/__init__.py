"""
A local emulator of the Microsoft identity platform and the Dataverse Web API for desktop flows.

It lets the provider run and be tested offline::

    from airflow_provider_pad.emulator import DataverseEmulator

    with DataverseEmulator() as emulator:
        print(emulator.connection_json())

Run ``python -m airflow_provider_pad.emulator --help`` to serve it from a shell. Importing this
package loads only the standard library. uvicorn, Starlette and cryptography load on start(),
and cryptography also when a certificate is registered.

The token endpoint accepts four credentials of the app:

- Its client secret.
- A client assertion signed by a registered certificate (:meth:`DataverseEmulator.register_client_certificate`).
- A client assertion whose ``x5c`` chain leads to a trusted issuer (:meth:`DataverseEmulator.register_trusted_issuer`).
- A token of the emulator's own federation issuer that matches a federated credential
  (:meth:`DataverseEmulator.register_federated_credential`, :meth:`DataverseEmulator.issue_federated_token`).

``GET /msi/token`` emulates App Service's managed identity endpoint
(:attr:`DataverseEmulator.managed_identity_endpoint`). Every token request's :class:`RequestRecord`
names its credential kind in ``detail``. The functions ``make_client_certificate`` and
``make_certificate_authority`` in :mod:`airflow_provider_pad.emulator.certificates` create
certificates and keys to test with.

Without ``flows``, the emulator serves these flows, with fixed workflow ids:

- ``DESKTOP_FLOW_1_ID``, "Desktop flow 1": inputs ``inputText`` and ``inputInteger``, outputs
  ``outputText`` (the text upper-cased) and ``outputInteger`` (the number doubled).
- ``DESKTOP_FLOW_2_ID``, "Desktop flow 2": the same schemas, with the text reversed and the number plus one.
- ``FAILING_FLOW_ID``, "Failing desktop flow": ends as 8 (Failed) with errorcode ``NoCandidateMachine``.
- ``FLOW_WITHOUT_OUTPUTS_ID``, "Flow without outputs": succeeds and writes no outputs file.
- ``DRAFT_FLOW_ID``, "Draft desktop flow": unpublished, so listed only with ``MSCRM.IncludeUnpublished: true``.

``GET flowsessions(<id>)/outputs/$value`` returns the outputs JSON once a run of a flow with
outputs has succeeded. In every other case (a run still queued or running, a run that did
not succeed, a flow without outputs) it returns 200 with an empty body.

``GET flowsessions`` lists runs with ``$filter``, ``$select``, ``$orderby``, ``$top`` and paging.
Its ``$filter`` takes ``eq``, ``ne``, ``gt``, ``ge``, ``lt`` and ``le`` comparisons, unquoted GUIDs and
dates and times, and ``Microsoft.Dynamics.CRM.In``, so that a client can read many runs at once::

    GET /api/data/v9.2/flowsessions?$select=statuscode,completedon
        &$filter=Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid',PropertyValues=['<id>','<id>'])

:meth:`DataverseEmulator.count_session_reads` returns how many status reads a run got. A Web API
request target longer than ``max_url_length`` (default 32768 characters) gets 414.

The request log, :meth:`DataverseEmulator.count` and :meth:`DataverseEmulator.inject` name
endpoints as :data:`ENDPOINT_NAMES` lists them: ``token``, ``openid``, ``list_workflows``,
``get_workflow``, ``input_schema``, ``output_schema``, ``run``, ``list_sessions``, ``get_session``,
``session_outputs``, ``cancel``, ``whoami``, ``current_organization``, ``managed_identity``,
``federation_openid`` and ``federation_keys``.
"""

from airflow_provider_pad.emulator.credential_registry import ManagedIdentity
from airflow_provider_pad.emulator.faults import Fault
from airflow_provider_pad.emulator.flows import (
    DESKTOP_FLOW_1_ID,
    DESKTOP_FLOW_2_ID,
    DRAFT_FLOW_ID,
    FAILING_FLOW_ID,
    FLOW_WITHOUT_OUTPUTS_ID,
    EmulatedFlow,
    FlowSession,
    SessionStatus,
    default_flows,
    schema_property,
)
from airflow_provider_pad.emulator.identifiers import (
    BUSINESS_UNIT_ID,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT_ID,
    ENVIRONMENT_ID,
    ORGANIZATION_ID,
    USER_ID,
)
from airflow_provider_pad.emulator.server import DataverseEmulator
from airflow_provider_pad.emulator.state import ENDPOINT_NAMES, RequestRecord

__all__ = [
    "BUSINESS_UNIT_ID",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_TENANT_ID",
    "DESKTOP_FLOW_1_ID",
    "DESKTOP_FLOW_2_ID",
    "DRAFT_FLOW_ID",
    "ENDPOINT_NAMES",
    "ENVIRONMENT_ID",
    "FAILING_FLOW_ID",
    "FLOW_WITHOUT_OUTPUTS_ID",
    "ORGANIZATION_ID",
    "USER_ID",
    "DataverseEmulator",
    "EmulatedFlow",
    "Fault",
    "FlowSession",
    "ManagedIdentity",
    "RequestRecord",
    "SessionStatus",
    "default_flows",
    "schema_property",
]
