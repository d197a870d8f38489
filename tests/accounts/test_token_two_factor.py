"""The TOTP code at POST /api/v1/auth/token/ for roles the tenant's policy names, and the amr claim it leaves."""

import pytest
from axes.models import AccessAttempt
from django.db import connection
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction, Outcome
from tests.accounts.conftest import ROLE_PASSWORD, create_user
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import TENANT_DOMAINS

TOKEN_URL = "/api/v1/auth/token/"


def _client(access=None):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    if access:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client


def _obtain(username, otp_token=None):
    body = {"username": username, "password": ROLE_PASSWORD}
    if otp_token is not None:
        body["otp_token"] = otp_token
    return _client().post(TOKEN_URL, body, format="json")


def _code_at(device, drift):
    return f"{totp(device.bin_key, device.step, device.t0, device.digits, drift):0{device.digits}d}"


def _current_code(device):
    return _code_at(device, device.drift)


def _wrong_code(device):
    # django-otp accepts the codes of the neighbouring time steps too (OTP_TOTP_TOLERANCE, 1 by default).
    accepted = {_code_at(device, device.drift + offset) for offset in (-1, 0, 1)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in accepted)


def _reset_throttle(device):
    # django-otp delays the next attempt after a wrong code; the test does not wait for it.
    device.refresh_from_db()
    device.throttle_reset()


@pytest.fixture
def policy(alpha):
    """Return a function that sets alpha's two_factor_roles; the test transaction undoes it."""

    def require(*roles):
        alpha.two_factor_roles = list(roles)
        alpha.save(update_fields=["two_factor_roles"])
        connection.set_tenant(alpha)

    return require


@pytest.fixture
def operator(alpha):
    return create_user(Role.OPERATOR)


@pytest.fixture
def device(operator):
    return TOTPDevice.objects.create(user=operator, name="phone", confirmed=True)


def test_obtain_without_code_is_401(policy, device):
    policy(Role.OPERATOR)

    response = _obtain("operator-user")

    assert response.status_code == 401
    assert response.data["detail"].code == "two_factor_code_required"
    assert "otp_token" in response.data["detail"]
    assert "access" not in response.data


def test_obtain_with_wrong_code_is_audited(policy, device, operator):
    policy(Role.OPERATOR)
    start = chain_head()

    response = _obtain("operator-user", _wrong_code(device))

    assert response.status_code == 401
    assert response.data["detail"].code == "two_factor_code_invalid"
    [entry] = entries_after(start)
    assert entry.action == AuditAction.LOGIN_FAILED
    assert entry.outcome == Outcome.FAILURE
    assert entry.actor_id == str(operator.pk)
    assert entry.detail == {"username": "operator-user", "factor": "totp"}
    attempt = AccessAttempt.objects.get(username="operator-user")
    assert attempt.failures_since_start == 1


def test_obtain_with_current_code_is_200(policy, device):
    policy(Role.OPERATOR)

    response = _obtain("operator-user", _current_code(device))

    assert response.status_code == 200
    assert AccessToken(response.data["access"])["amr"] == ["pwd", "otp"]
    assert RefreshToken(response.data["refresh"])["amr"] == ["pwd", "otp"]


def test_reused_code_is_401(policy, device):
    policy(Role.OPERATOR)
    code = _current_code(device)

    first = _obtain("operator-user", code)
    second = _obtain("operator-user", code)

    assert first.status_code == 200
    assert second.status_code == 401
    assert second.data["detail"].code == "two_factor_code_invalid"


def test_code_after_wrong_one_is_throttled(policy, device, settings):
    # A one-minute delay after the first wrong code, so a slow test run cannot outlast it.
    settings.OTP_TOTP_THROTTLE_FACTOR = 60
    policy(Role.OPERATOR)

    wrong = _obtain("operator-user", _wrong_code(device))
    throttled = _obtain("operator-user", _current_code(device))
    _reset_throttle(device)
    after_delay = _obtain("operator-user", _current_code(device))

    assert wrong.status_code == 401
    assert "wait" not in wrong.data["detail"]
    assert throttled.status_code == 401
    assert "Too many invalid two-factor codes; wait " in throttled.data["detail"]
    assert after_delay.status_code == 200


def test_role_without_policy_needs_no_code(policy, device):
    policy(Role.ADMIN)

    response = _obtain("operator-user")

    assert response.status_code == 200
    assert AccessToken(response.data["access"])["amr"] == ["pwd"]


def test_user_without_device_is_403(policy, operator):
    TOTPDevice.objects.create(user=operator, name="unconfirmed", confirmed=False)
    policy(Role.OPERATOR)

    response = _obtain("operator-user", "123456")

    assert response.status_code == 403
    assert response.data["detail"].code == "two_factor_not_enrolled"
    assert "enrol two-factor in the web UI first" in response.data["detail"]


def test_wrong_password_is_checked_before_code(policy, device):
    policy(Role.OPERATOR)

    response = _client().post(TOKEN_URL, {"username": "operator-user", "password": "wrong", "otp_token": "123456"},
                              format="json")

    assert response.status_code == 401
    assert response.data["detail"].code == "no_active_account"


def test_wrong_codes_lead_to_lockout(policy, device, settings):
    policy(Role.OPERATOR)
    statuses = []
    for _attempt in range(settings.AXES_FAILURE_LIMIT):
        statuses.append(_obtain("operator-user", _wrong_code(device)).status_code)
        _reset_throttle(device)

    locked = _obtain("operator-user", _current_code(device))

    assert statuses == [401] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    assert locked.status_code == 429
    assert AuditAction.LOCKOUT in {entry.action for entry in entries_after(0)}


def test_refresh_needs_no_code_and_keeps_amr(policy, device):
    policy(Role.OPERATOR)
    pair = _obtain("operator-user", _current_code(device)).data

    response = _client().post(f"{TOKEN_URL}refresh/", {"refresh": pair["refresh"]}, format="json")

    assert response.status_code == 200
    assert AccessToken(response.data["access"])["amr"] == ["pwd", "otp"]
    assert RefreshToken(response.data["refresh"])["amr"] == ["pwd", "otp"]


def test_api_key_needs_two_factor_token(policy, alpha):
    admin = create_user(Role.ADMIN)
    admin_device = TOTPDevice.objects.create(user=admin, name="phone", confirmed=True)
    # Issued while the policy did not name the Admin role, so the login skipped the TOTP step.
    password_only = _obtain("admin-user").data["access"]
    policy(Role.ADMIN)
    two_factor = _obtain("admin-user", _current_code(admin_device)).data["access"]
    body = {"name": "Historian export", "role": "admin"}

    rejected = _client(password_only).post("/api/v1/api-keys/", body, format="json")
    created = _client(two_factor).post("/api/v1/api-keys/", body, format="json")

    assert rejected.status_code == 403
    assert rejected.data["detail"].code == "two_factor_required"
    assert created.status_code == 201


def test_api_key_with_role_outside_policy(policy, alpha):
    create_user(Role.ADMIN)
    policy(Role.OPERATOR)
    access = _obtain("admin-user").data["access"]

    response = _client(access).post("/api/v1/api-keys/", {"name": "Export", "role": "viewer"}, format="json")

    assert response.status_code == 201
