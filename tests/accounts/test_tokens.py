import base64
import json
import threading

import jwt
import pytest
from django.conf import settings
from django.db import connections
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from tests.accounts.conftest import ROLE_PASSWORD, create_user
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS


def _client(schema="alpha", access=None):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS[schema])
    if access:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client


def _login(username, password=ROLE_PASSWORD, schema="alpha"):
    response = _client(schema).post("/api/v1/auth/token/", {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.data
    return response.data


def _refresh(refresh, schema="alpha"):
    return _client(schema).post("/api/v1/auth/token/refresh/", {"refresh": refresh}, format="json")


def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _payload(token):
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def viewer(alpha):
    return create_user(Role.VIEWER)


def test_refresh_rotates_refresh_token(viewer):
    tokens = _login("viewer-user")

    refreshed = _refresh(tokens["refresh"])

    assert refreshed.status_code == 200
    assert refreshed.data["refresh"] != tokens["refresh"]
    assert _client(access=refreshed.data["access"]).get("/api/v1/units/").status_code == 200


def test_rotated_refresh_token_is_dead(viewer):
    tokens = _login("viewer-user")
    rotated = _refresh(tokens["refresh"])

    replayed = _refresh(tokens["refresh"])

    assert rotated.status_code == 200
    assert replayed.status_code == 401
    assert "access" not in replayed.data
    assert _refresh(rotated.data["refresh"]).status_code == 200


def test_logout_blacklists_refresh_token(viewer):
    tokens = _login("viewer-user")

    logged_out = _client().post("/api/v1/auth/logout/", {"refresh": tokens["refresh"]}, format="json")
    refreshed = _refresh(tokens["refresh"])

    assert logged_out.status_code == 200
    assert refreshed.status_code == 401
    assert "access" not in refreshed.data


def test_logout_with_other_tenant_token_is_rejected(viewer, beta):
    tokens = _login("admin", ADMIN_PASSWORD, schema="beta")

    response = _client("alpha").post("/api/v1/auth/logout/", {"refresh": tokens["refresh"]}, format="json")

    assert response.status_code == 401
    assert _refresh(tokens["refresh"], schema="beta").status_code == 200


def test_logout_without_token_names_field(alpha):
    response = _client().post("/api/v1/auth/logout/", {}, format="json")

    assert response.status_code == 400
    assert "refresh" in response.data


def test_deactivated_user_tokens_are_rejected(viewer):
    tokens = _login("viewer-user")
    viewer.is_active = False
    viewer.save(update_fields=["is_active"])

    refreshed = _refresh(tokens["refresh"])
    used = _client(access=tokens["access"]).get("/api/v1/units/")

    assert refreshed.status_code == 401
    assert "access" not in refreshed.data
    assert "refresh" not in refreshed.data
    assert used.status_code == 401


def test_deleted_user_tokens_are_rejected(viewer):
    tokens = _login("viewer-user")
    viewer.delete()

    refreshed = _refresh(tokens["refresh"])
    used = _client(access=tokens["access"]).get("/api/v1/units/")

    assert refreshed.status_code == 401
    assert "access" not in refreshed.data
    assert used.status_code == 401


def test_password_change_revokes_tokens(viewer):
    tokens = _login("viewer-user")
    viewer.set_password("Another-plant-key-9931")
    viewer.save(update_fields=["password"])

    refreshed = _refresh(tokens["refresh"])
    used = _client(access=tokens["access"]).get("/api/v1/units/")

    assert refreshed.status_code == 401
    assert used.status_code == 401


def test_inactive_user_gets_no_token(alpha):
    create_user(Role.VIEWER, is_active=False)

    response = _client().post(
        "/api/v1/auth/token/", {"username": "viewer-user", "password": ROLE_PASSWORD}, format="json"
    )

    assert response.status_code == 401
    assert "access" not in response.data


def test_token_with_alg_none_is_rejected(viewer):
    access = _login("viewer-user")["access"]
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_payload(access))}."

    response = _client(access=unsigned).get("/api/v1/units/")

    assert response.status_code == 401


# The attacker's key is the right one but too short for HS512, which PyJWT warns about.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_token_resigned_with_other_hmac_is_rejected(viewer, algorithm):
    access = _login("viewer-user")["access"]
    resigned = jwt.encode(_payload(access), settings.SIMPLE_JWT["SIGNING_KEY"], algorithm=algorithm)

    response = _client(access=resigned).get("/api/v1/units/")

    assert response.status_code == 401


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_refresh_resigned_with_other_hmac_is_rejected(viewer):
    refresh = _login("viewer-user")["refresh"]
    resigned = jwt.encode(_payload(refresh), settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS512")

    response = _refresh(resigned)

    assert response.status_code == 401
    assert "access" not in response.data


def test_tenant_claim_edited_without_key_is_rejected(viewer):
    access = _login("viewer-user")["access"]
    header, _, signature = access.split(".")
    forged = f"{header}.{_b64({**_payload(access), 'tenant': 'beta'})}.{signature}"

    response = _client("beta", access=forged).get("/api/v1/units/")

    assert response.status_code == 401


def test_token_replayed_on_other_tenant_is_rejected(viewer, beta):
    tokens = _login("viewer-user")

    used = _client("beta", access=tokens["access"]).get("/api/v1/units/")
    refreshed = _refresh(tokens["refresh"], schema="beta")

    assert used.status_code == 401
    assert refreshed.status_code == 401
    assert "access" not in refreshed.data


def test_token_events_are_audited(viewer):
    tokens = _login("viewer-user")
    rotated = _refresh(tokens["refresh"]).data
    _client().post("/api/v1/auth/logout/", {"refresh": rotated["refresh"]}, format="json")

    actions = list(AuditEntry.objects.filter(actor_id=str(viewer.pk)).values_list("action", flat=True))

    assert AuditAction.TOKEN_ISSUED in actions
    assert AuditAction.TOKEN_REFRESHED in actions
    assert AuditAction.TOKEN_REVOKED in actions


def test_tenant_claim_alone_rejects_replay(viewer, beta, monkeypatch):
    from rest_framework_simplejwt import authentication as jwt_authentication

    # Without the password-hash claim check, a replayed token of user id N
    # would otherwise resolve to user N of the other tenant.
    monkeypatch.setattr(jwt_authentication.api_settings, "CHECK_REVOKE_TOKEN", False)
    access = _login("admin", ADMIN_PASSWORD)["access"]

    response = _client("beta", access=access).get("/api/v1/units/")

    assert response.status_code == 401
    assert "another tenant" in response.data["detail"]


def test_concurrent_refreshes_rotate_once(committed_users, django_db_blocker):
    viewer = committed_users[Role.VIEWER]
    barrier = threading.Barrier(2)
    statuses = []

    def refresh(token):
        barrier.wait(timeout=10)
        statuses.append(_refresh(token).status_code)
        connections.close_all()

    with django_db_blocker.unblock():
        refresh_token = _login(viewer.username)["refresh"]
        threads = [threading.Thread(target=refresh, args=(refresh_token,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert sorted(statuses) == [200, 401]
