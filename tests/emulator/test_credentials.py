"""
Tests of the emulated credential kinds with real MSAL over HTTPS: certificates, subject-name/issuer
authentication, workload identity federation and App Service managed identities.
"""

from __future__ import annotations

import base64
import socket
import time
import uuid

import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from airflow_provider_pad.emulator import DataverseEmulator
from airflow_provider_pad.emulator.certificates import make_certificate_authority, make_client_certificate
from tests.emulator.webapi import QUEUE_SECONDS, RUN_SECONDS, WEB_API_PATH

TRUSTED_SUBJECT = "sni-app.dataverse-emulator.test"
WORKLOAD_SUBJECT = "system:serviceaccount:airflow:worker"
USER_ASSIGNED_CLIENT_ID = "00000000-0000-0000-0000-0000000000c2"
PFX_PASSPHRASE = "emulator-pfx-passphrase"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# More than the token endpoint's 300 seconds of allowed clock skew.
BEYOND_CLOCK_SKEW_SECONDS = 600


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connection to a host other than 127.0.0.1, such as the IMDS address 169.254.169.254."""
    original_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            raise AssertionError(f"A test tried to connect to {address[0]}, but only 127.0.0.1 is allowed.")
        return original_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def app_certificate():
    return make_client_certificate("dataverse-emulator-app")


@pytest.fixture(scope="module")
def unregistered_certificate():
    return make_client_certificate("unregistered-app")


@pytest.fixture(scope="module")
def issuing_ca():
    return make_certificate_authority("Dataverse emulator test issuing CA")


@pytest.fixture(scope="module")
def issued_certificate(issuing_ca):
    return make_client_certificate(TRUSTED_SUBJECT, issuer=issuing_ca)


@pytest.fixture(scope="module")
def shared_emulator(app_certificate, issuing_ca):
    """The module's emulator, with one certificate, one trusted issuer, one federated credential and two identities."""
    emulator = DataverseEmulator(
        queue_seconds=QUEUE_SECONDS,
        run_seconds=RUN_SECONDS,
        client_certificates=[app_certificate.cert_pem.encode("ascii")],
    )
    with emulator:
        emulator.register_trusted_issuer(issuing_ca.cert_pem, subject=TRUSTED_SUBJECT)
        emulator.register_federated_credential(emulator.federation_issuer, WORKLOAD_SUBJECT)
        emulator.register_managed_identity()
        emulator.register_managed_identity(USER_ASSIGNED_CLIENT_ID)
        yield emulator


@pytest.fixture
def identity_environment(emulator, monkeypatch):
    """Point MSAL's App Service managed identity source at the module's emulator."""
    point_managed_identity_at(emulator, monkeypatch)


def point_managed_identity_at(emulator: DataverseEmulator, monkeypatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", emulator.managed_identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emulator.managed_identity_header)
    # Each of these would make MSAL pick Service Fabric, Azure ML or Azure Arc instead of App Service.
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def identity_session(ca_path: str) -> requests.Session:
    """A session that passes the CA with every request, because REQUESTS_CA_BUNDLE overrides Session.verify."""

    class IdentitySession(requests.Session):
        def request(self, method, url, **kwargs):
            kwargs.setdefault("verify", ca_path)
            kwargs.setdefault("timeout", 10)
            return super().request(method, url, **kwargs)

    return IdentitySession()


def acquire(emulator: DataverseEmulator, credential) -> dict:
    """Request a token for the emulator's Web API with MSAL and ``credential``."""
    with identity_session(emulator.ca_path) as session:
        application = msal.ConfidentialClientApplication(
            emulator.client_id,
            client_credential=credential,
            authority=emulator.authority,
            instance_discovery=False,
            http_client=session,
        )
        return application.acquire_token_for_client([f"{emulator.base_url}/.default"])


def acquire_managed(emulator: DataverseEmulator, managed_identity) -> dict:
    with identity_session(emulator.ca_path) as session:
        client = msal.ManagedIdentityClient(managed_identity, http_client=session)
        return client.acquire_token_for_client(resource=emulator.base_url)


def whoami_status(emulator: DataverseEmulator, token: str) -> int:
    with identity_session(emulator.ca_path) as session:
        response = session.get(
            f"{emulator.base_url}{WEB_API_PATH}/WhoAmI", headers={"Authorization": f"Bearer {token}"}
        )
    return response.status_code


def error_code(result: dict) -> int | None:
    codes = result.get("error_codes") or [None]
    return codes[0]


def x5t(certificate) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(certificate.thumbprint_sha1_hex)).decode("ascii").rstrip("=")


def certificate_assertion(emulator: DataverseEmulator, certificate, *, headers=None, **claim_overrides) -> str:
    """Sign a certificate client assertion with PyJWT, as an independent implementation would."""
    now = int(time.time())
    claims = {
        "aud": emulator.token_endpoint,
        "iss": emulator.client_id,
        "sub": emulator.client_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
        **claim_overrides,
    }
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, certificate.key_pem, algorithm="RS256", headers=headers or {"x5t": x5t(certificate)})


def post_assertion(emulator: DataverseEmulator, assertion: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": emulator.client_id,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
        "scope": f"{emulator.base_url}/.default",
    }
    with identity_session(emulator.ca_path) as session:
        return session.post(emulator.token_endpoint, data=form)


# Certificates registered by thumbprint


def test_certificate_thumbprint_token(emulator, app_certificate):
    credential = {"private_key": app_certificate.key_pem, "thumbprint": app_certificate.thumbprint_sha1_hex}
    result = acquire(emulator, credential)
    assert result.get("token_type") == "Bearer"
    assert whoami_status(emulator, result["access_token"]) == 200


def test_certificate_logged_kind(emulator, app_certificate):
    acquire(emulator, {"private_key": app_certificate.key_pem, "thumbprint": app_certificate.thumbprint_sha1_hex})
    record = emulator.requests[-1]
    assert record.endpoint == "token"
    assert record.detail == "certificate"


def test_certificate_sha256_token(emulator, app_certificate):
    # Without a thumbprint, MSAL signs with PS256 and names the certificate by x5t#S256.
    result = acquire(emulator, {"private_key": app_certificate.key_pem, "public_certificate": app_certificate.cert_pem})
    assert result.get("access_token")


def test_certificate_pfx_token(emulator, app_certificate, tmp_path):
    pfx_path = tmp_path / "app.pfx"
    pfx_path.write_bytes(app_certificate.pfx_bytes(PFX_PASSPHRASE))
    result = acquire(emulator, {"private_key_pfx_path": str(pfx_path), "passphrase": PFX_PASSPHRASE})
    assert result.get("access_token")
    assert emulator.requests[-1].detail == "certificate"


def test_certificate_pfx_wrong_passphrase(emulator, app_certificate, tmp_path):
    pfx_path = tmp_path / "app.pfx"
    pfx_path.write_bytes(app_certificate.pfx_bytes(PFX_PASSPHRASE))
    with pytest.raises(ValueError):
        acquire(emulator, {"private_key_pfx_path": str(pfx_path), "passphrase": "wrong"})


def test_certificate_wrong_key(emulator, app_certificate, unregistered_certificate):
    credential = {"private_key": unregistered_certificate.key_pem, "thumbprint": app_certificate.thumbprint_sha1_hex}
    result = acquire(emulator, credential)
    assert result.get("error") == "invalid_client"
    assert error_code(result) == 700027
    assert "signature validation" in result["error_description"]


def test_certificate_unregistered(emulator, unregistered_certificate):
    credential = {
        "private_key": unregistered_certificate.key_pem,
        "thumbprint": unregistered_certificate.thumbprint_sha1_hex,
    }
    result = acquire(emulator, credential)
    assert result.get("error") == "invalid_client"
    assert error_code(result) == 700027
    assert unregistered_certificate.thumbprint_sha1_hex in result["error_description"]


def test_certificate_registered_later(unregistered_certificate):
    with DataverseEmulator() as emulator:
        credential = {
            "private_key": unregistered_certificate.key_pem,
            "thumbprint": unregistered_certificate.thumbprint_sha1_hex,
        }
        before = acquire(emulator, credential)
        emulator.register_client_certificate(unregistered_certificate)
        after = acquire(emulator, credential)
    assert error_code(before) == 700027
    assert after.get("access_token")


def test_certificate_from_path(app_certificate, tmp_path):
    certificate_path = tmp_path / "app.pem"
    certificate_path.write_text(app_certificate.cert_pem)
    with DataverseEmulator(client_certificates=[certificate_path]) as emulator:
        result = acquire(
            emulator, {"private_key": app_certificate.key_pem, "thumbprint": app_certificate.thumbprint_sha1_hex}
        )
    assert result.get("access_token")


def test_certificate_invalid_pem():
    with pytest.raises(ValueError, match="not an X.509 certificate"):
        DataverseEmulator(client_certificates=[b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"])


# Hand-made certificate assertions


def test_assertion_expired(emulator, app_certificate):
    expired_at = int(time.time()) - BEYOND_CLOCK_SKEW_SECONDS
    assertion = certificate_assertion(emulator, app_certificate, exp=expired_at, nbf=expired_at - 600)
    result = acquire(emulator, {"client_assertion": lambda: assertion})
    assert result.get("error") == "invalid_client"
    assert error_code(result) == 700024


def test_assertion_within_clock_skew(emulator, app_certificate):
    assertion = certificate_assertion(emulator, app_certificate, exp=int(time.time()) - 60)
    assert post_assertion(emulator, assertion).status_code == 200


def test_assertion_not_yet_valid(emulator, app_certificate):
    assertion = certificate_assertion(emulator, app_certificate, nbf=int(time.time()) + BEYOND_CLOCK_SKEW_SECONDS)
    assert post_assertion(emulator, assertion).json()["error_codes"] == [700024]


def test_assertion_without_nbf(emulator, app_certificate):
    # MSAL Python sends no nbf claim, so nbf is optional.
    assertion = certificate_assertion(emulator, app_certificate, nbf=None)
    assert post_assertion(emulator, assertion).status_code == 200


def test_assertion_without_jti(emulator, app_certificate):
    response = post_assertion(emulator, certificate_assertion(emulator, app_certificate, jti=None))
    assert response.status_code == 400
    assert response.json()["error_codes"] == [50027]


def test_assertion_without_exp(emulator, app_certificate):
    response = post_assertion(emulator, certificate_assertion(emulator, app_certificate, exp=None))
    assert response.json()["error_codes"] == [50027]


def test_assertion_wrong_audience(emulator, app_certificate):
    other_audience = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assertion = certificate_assertion(emulator, app_certificate, aud=other_audience)
    response = post_assertion(emulator, assertion)
    assert response.status_code == 401
    assert response.json()["error_codes"] == [700023]


def test_assertion_audience_list(emulator, app_certificate):
    assertion = certificate_assertion(emulator, app_certificate, aud=["https://example.test", emulator.token_endpoint])
    assert post_assertion(emulator, assertion).status_code == 200


def test_assertion_wrong_subject(emulator, app_certificate):
    assertion = certificate_assertion(emulator, app_certificate, sub=str(uuid.uuid4()))
    assert post_assertion(emulator, assertion).json()["error_codes"] == [700021]


def test_assertion_wrong_issuer(emulator, app_certificate):
    assertion = certificate_assertion(emulator, app_certificate, iss=str(uuid.uuid4()))
    assert post_assertion(emulator, assertion).json()["error_codes"] == [700021]


def test_assertion_without_certificate_header(emulator, app_certificate):
    assertion = certificate_assertion(emulator, app_certificate, headers={"kid": "some-key"})
    response = post_assertion(emulator, assertion)
    assert response.status_code == 401
    assert response.json()["error_codes"] == [700027]


def test_assertion_hs256_rejected(emulator, app_certificate):
    claims = jwt.decode(certificate_assertion(emulator, app_certificate), options={"verify_signature": False})
    shared_secret = "shared-secret-of-32-bytes-or-more!"
    assertion = jwt.encode(claims, shared_secret, algorithm="HS256", headers={"x5t": x5t(app_certificate)})
    assert post_assertion(emulator, assertion).json()["error_codes"] == [5002730]


def test_assertion_unknown_type(emulator, app_certificate):
    form = {
        "grant_type": "client_credentials",
        "client_id": emulator.client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        "client_assertion": certificate_assertion(emulator, app_certificate),
        "scope": f"{emulator.base_url}/.default",
    }
    with identity_session(emulator.ca_path) as session:
        response = session.post(emulator.token_endpoint, data=form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# Subject-name/issuer authentication


def test_subject_issuer_token(emulator, issued_certificate):
    credential = {
        "private_key": issued_certificate.key_pem,
        "thumbprint": issued_certificate.thumbprint_sha1_hex,
        "public_certificate": issued_certificate.cert_pem,
    }
    result = acquire(emulator, credential)
    assert result.get("access_token")
    assert emulator.requests[-1].detail == "certificate"


def test_subject_issuer_pfx_token(emulator, issued_certificate, tmp_path):
    pfx_path = tmp_path / "issued.pfx"
    pfx_path.write_bytes(issued_certificate.pfx_bytes(PFX_PASSPHRASE))
    credential = {"private_key_pfx_path": str(pfx_path), "passphrase": PFX_PASSPHRASE, "public_certificate": True}
    assert acquire(emulator, credential).get("access_token")


def test_subject_issuer_needs_x5c(emulator, issued_certificate):
    # Without public_certificate MSAL sends no x5c, and the certificate itself is not registered.
    credential = {"private_key": issued_certificate.key_pem, "thumbprint": issued_certificate.thumbprint_sha1_hex}
    assert error_code(acquire(emulator, credential)) == 700027


def test_subject_issuer_wrong_subject(emulator, issuing_ca):
    other_subject = make_client_certificate("other-app.dataverse-emulator.test", issuer=issuing_ca)
    credential = {"private_key": other_subject.key_pem, "public_certificate": other_subject.cert_pem}
    result = acquire(emulator, credential)
    assert result.get("error") == "invalid_client"
    assert error_code(result) == 700027


def test_subject_issuer_untrusted_ca(emulator):
    untrusted_ca = make_certificate_authority("Untrusted CA")
    impostor = make_client_certificate(TRUSTED_SUBJECT, issuer=untrusted_ca)
    credential = {"private_key": impostor.key_pem, "public_certificate": impostor.cert_pem}
    assert error_code(acquire(emulator, credential)) == 700027


def test_subject_issuer_intermediate_ca(emulator, issuing_ca):
    intermediate_ca = make_certificate_authority("Dataverse emulator test intermediate CA", issuer=issuing_ca)
    leaf = make_client_certificate(TRUSTED_SUBJECT, issuer=intermediate_ca)
    credential = {
        "private_key": leaf.key_pem,
        "thumbprint": leaf.thumbprint_sha1_hex,
        "public_certificate": leaf.cert_pem + intermediate_ca.cert_pem,
    }
    assert acquire(emulator, credential).get("access_token")


def test_subject_issuer_missing_intermediate(emulator, issuing_ca):
    intermediate_ca = make_certificate_authority("Dataverse emulator test intermediate CA", issuer=issuing_ca)
    leaf = make_client_certificate(TRUSTED_SUBJECT, issuer=intermediate_ca)
    credential = {"private_key": leaf.key_pem, "public_certificate": leaf.cert_pem}
    assert error_code(acquire(emulator, credential)) == 700027


def test_subject_issuer_thumbprint_mismatch(emulator, issued_certificate, unregistered_certificate):
    der = issued_certificate.certificate.public_bytes(Encoding.DER)
    header = {"x5t": x5t(unregistered_certificate), "x5c": [base64.b64encode(der).decode("ascii")]}
    assertion = certificate_assertion(emulator, issued_certificate, headers=header)
    assert post_assertion(emulator, assertion).json()["error_codes"] == [700027]


def test_trusted_issuer_must_be_ca(emulator, app_certificate):
    with pytest.raises(ValueError, match="not a CA"):
        emulator.register_trusted_issuer(app_certificate.cert_pem, subject=TRUSTED_SUBJECT)


# Workload identity federation


def test_federated_token_file(emulator, tmp_path):
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(emulator.issue_federated_token(WORKLOAD_SUBJECT))
    result = acquire(emulator, {"client_assertion": lambda: token_file.read_text()})
    assert result.get("access_token")
    assert emulator.requests[-1].detail == "federated"
    assert whoami_status(emulator, result["access_token"]) == 200


def test_federated_wrong_subject(emulator):
    assertion = emulator.issue_federated_token("system:serviceaccount:airflow:other")
    result = acquire(emulator, {"client_assertion": lambda: assertion})
    assert result.get("error") == "invalid_client"
    assert error_code(result) == 700213


def test_federated_subject_case_sensitive(emulator):
    assertion = emulator.issue_federated_token(WORKLOAD_SUBJECT.upper())
    assert error_code(acquire(emulator, {"client_assertion": lambda: assertion})) == 700213


def test_federated_wrong_audience(emulator):
    assertion = emulator.issue_federated_token(WORKLOAD_SUBJECT, audience="api://SomethingElse")
    assert error_code(acquire(emulator, {"client_assertion": lambda: assertion})) == 700212


def test_federated_expired(emulator):
    assertion = emulator.issue_federated_token(WORKLOAD_SUBJECT, lifetime_seconds=-BEYOND_CLOCK_SKEW_SECONDS)
    assert error_code(acquire(emulator, {"client_assertion": lambda: assertion})) == 700024


def test_federated_unknown_issuer(emulator, unregistered_certificate):
    now = int(time.time())
    claims = {
        "iss": "https://issuer.example.test",
        "sub": WORKLOAD_SUBJECT,
        "aud": "api://AzureADTokenExchange",
        "iat": now,
        "exp": now + 600,
    }
    assertion = jwt.encode(claims, unregistered_certificate.key_pem, algorithm="RS256", headers={"kid": "k1"})
    assert error_code(acquire(emulator, {"client_assertion": lambda: assertion})) == 700211


def test_federated_forged_signature(emulator, unregistered_certificate):
    genuine = jwt.decode(emulator.issue_federated_token(WORKLOAD_SUBJECT), options={"verify_signature": False})
    forged = jwt.encode(genuine, unregistered_certificate.key_pem, algorithm="RS256")
    assert error_code(acquire(emulator, {"client_assertion": lambda: forged})) == 700027


def test_federated_token_claims(emulator):
    claims = jwt.decode(emulator.issue_federated_token(WORKLOAD_SUBJECT, 120), options={"verify_signature": False})
    assert claims["iss"] == emulator.federation_issuer
    assert claims["sub"] == WORKLOAD_SUBJECT
    assert claims["aud"] == "api://AzureADTokenExchange"
    assert claims["exp"] - claims["iat"] == 120


def test_federation_discovery(emulator):
    with identity_session(emulator.ca_path) as session:
        configuration = session.get(f"{emulator.federation_issuer}/.well-known/openid-configuration").json()
        jwks = session.get(configuration["jwks_uri"]).json()
    assert configuration["issuer"] == emulator.federation_issuer
    assert configuration["id_token_signing_alg_values_supported"] == ["RS256"]
    assert [key["kty"] for key in jwks["keys"]] == ["RSA"]


def test_federation_jwks_verifies_token(emulator):
    with identity_session(emulator.ca_path) as session:
        jwks = session.get(f"{emulator.base_url}/federation/.well-known/jwks").json()
    token = emulator.issue_federated_token(WORKLOAD_SUBJECT)
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(token, key=key, algorithms=["RS256"], audience="api://AzureADTokenExchange")
    assert claims["sub"] == WORKLOAD_SUBJECT
    assert jwt.get_unverified_header(token)["kid"] == jwks["keys"][0]["kid"]


# Managed identity (App Service)


def test_managed_identity_system_assigned(emulator, identity_environment):
    result = acquire_managed(emulator, msal.SystemAssignedManagedIdentity())
    assert result.get("token_type") == "Bearer"
    assert whoami_status(emulator, result["access_token"]) == 200
    assert emulator.count("managed_identity", status=200) == 1
    assert emulator.requests[0].detail == "managed_identity"


def test_managed_identity_user_assigned(emulator, identity_environment):
    result = acquire_managed(emulator, msal.UserAssignedManagedIdentity(client_id=USER_ASSIGNED_CLIENT_ID))
    assert result.get("access_token")
    assert whoami_status(emulator, result["access_token"]) == 200
    assert f"client_id={USER_ASSIGNED_CLIENT_ID}" in emulator.requests[0].query


def test_managed_identity_by_object_id(emulator, identity_environment):
    identity = emulator.register_managed_identity("00000000-0000-0000-0000-0000000000c3")
    result = acquire_managed(emulator, msal.UserAssignedManagedIdentity(object_id=identity.object_id))
    assert result.get("access_token")


def test_managed_identity_by_resource_id(emulator, identity_environment):
    identity = emulator.register_managed_identity("00000000-0000-0000-0000-0000000000c4")
    result = acquire_managed(emulator, msal.UserAssignedManagedIdentity(resource_id=identity.resource_id))
    assert result.get("access_token")


def test_managed_identity_unknown_user(emulator, identity_environment):
    result = acquire_managed(emulator, msal.UserAssignedManagedIdentity(client_id=str(uuid.uuid4())))
    assert "access_token" not in result
    assert result.get("error_description", "").startswith("400, Unable to load the proper Managed Identity.")


def test_managed_identity_wrong_header(emulator, identity_environment, monkeypatch):
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-secret")
    result = acquire_managed(emulator, msal.SystemAssignedManagedIdentity())
    assert "access_token" not in result
    assert result.get("error_description", "").startswith("401, ")


def test_managed_identity_response_fields(emulator):
    with identity_session(emulator.ca_path) as session:
        response = session.get(
            emulator.managed_identity_endpoint,
            params={"api-version": "2019-08-01", "resource": emulator.base_url, "client_id": USER_ASSIGNED_CLIENT_ID},
            headers={"X-IDENTITY-HEADER": emulator.managed_identity_header},
        )
    payload = response.json()
    assert payload["token_type"] == "Bearer"
    assert payload["client_id"] == USER_ASSIGNED_CLIENT_ID
    assert payload["resource"] == emulator.base_url
    assert isinstance(payload["expires_on"], str)
    assert abs(int(payload["expires_on"]) - (time.time() + 3600)) < 60


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({}, {}, 400),
        ({}, {"X-IDENTITY-HEADER": "wrong"}, 401),
        ({"api-version": "2017-09-01"}, None, 400),
        ({"resource": None}, None, 400),
        ({"resource": "https://vault.azure.net"}, None, 500),
        ({"client_id": USER_ASSIGNED_CLIENT_ID, "object_id": str(uuid.uuid4())}, None, 400),
    ],
    ids=["no-header", "wrong-header", "old-api-version", "no-resource", "other-resource", "two-ids"],
)
def test_managed_identity_rejected(emulator, params, headers, status):
    query = {"api-version": "2019-08-01", "resource": emulator.base_url, **params}
    query = {name: value for name, value in query.items() if value is not None}
    if headers is None:
        headers = {"X-IDENTITY-HEADER": emulator.managed_identity_header}
    with identity_session(emulator.ca_path) as session:
        response = session.get(emulator.managed_identity_endpoint, params=query, headers=headers)
    assert response.status_code == status
    assert response.json()["statusCode"] == status
    assert response.json()["message"]


def test_managed_identity_not_registered(monkeypatch):
    with DataverseEmulator() as emulator:
        point_managed_identity_at(emulator, monkeypatch)
        result = acquire_managed(emulator, msal.SystemAssignedManagedIdentity())
    assert result.get("error_description", "").startswith("400, Unable to load the proper Managed Identity.")


def test_managed_identity_token_expires(emulator, identity_environment):
    token = acquire_managed(emulator, msal.SystemAssignedManagedIdentity())["access_token"]
    emulator.expire_tokens()
    assert whoami_status(emulator, token) == 401


def test_managed_identity_register_twice(emulator):
    first = emulator.register_managed_identity()
    second = emulator.register_managed_identity()
    assert second == first
    assert first.system_assigned


# Request log


def test_client_secret_logged_kind(emulator):
    result = acquire(emulator, emulator.client_secret)
    assert result.get("access_token")
    assert emulator.requests[-1].detail == "client_secret"


def test_rejected_request_logged_kind(emulator, unregistered_certificate):
    credential = {
        "private_key": unregistered_certificate.key_pem,
        "thumbprint": unregistered_certificate.thumbprint_sha1_hex,
    }
    acquire(emulator, credential)
    record = emulator.requests[-1]
    assert record.status == 401
    assert record.detail == "certificate"


def test_credentials_never_logged(emulator, app_certificate, caplog, tmp_path, identity_environment):
    caplog.set_level("DEBUG", logger="airflow_provider_pad.emulator")
    federated = emulator.issue_federated_token(WORKLOAD_SUBJECT)
    assertion = certificate_assertion(emulator, app_certificate)
    tokens = [
        post_assertion(emulator, assertion).json()["access_token"],
        acquire(emulator, {"client_assertion": lambda: federated})["access_token"],
        acquire_managed(emulator, msal.SystemAssignedManagedIdentity())["access_token"],
    ]
    logged = caplog.text + repr(emulator.requests)
    for secret in [assertion, federated, emulator.managed_identity_header, *tokens]:
        assert secret not in logged
