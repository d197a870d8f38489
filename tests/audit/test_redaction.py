"""Secrets never reach the audit trail, whichever path writes the entry."""

import json

import pytest
from axes.models import AccessAttempt
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.audit.choices import AuditAction
from apps.audit.redaction import REDACTED, is_secret_name, redact
from apps.audit.services import Actor, record
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import admin_of

CSRF_TOKEN = "Yx8Kq2csrfTokenValue0123456789abcdefABCDEF"
SESSION_TOKEN = "sessionTokenValue9876543210"
LOGIN_POST_DATA = f"username=mallory\ncsrfmiddlewaretoken={CSRF_TOKEN}\npassword=********\nnext=/"


def _attempt(username="mallory"):
    return AccessAttempt.objects.create(
        username=username, ip_address="192.0.2.66", user_agent="curl", path_info="/accounts/login/",
        get_data=f"next=/&token={SESSION_TOKEN}", post_data=LOGIN_POST_DATA, http_accept="*/*",
        failures_since_start=5,
    )


def _stored_text(entry):
    return json.dumps({"changes": entry.changes, "detail": entry.detail})


def test_admin_delete_of_access_attempt_redacts_csrf_token(alpha_client):
    attempt = _attempt()
    start = chain_head()

    response = alpha_client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert entry.action == AuditAction.OBJECT_DELETED
    assert CSRF_TOKEN not in _stored_text(entry)
    assert SESSION_TOKEN not in _stored_text(entry)
    assert f"csrfmiddlewaretoken={REDACTED}" in entry.changes["post_data"][0]
    assert "username=mallory" in entry.changes["post_data"][0]
    assert entry.changes["username"] == ["mallory", None]


def test_admin_bulk_delete_of_access_attempts_redacts_csrf_token(alpha_client):
    attempts = [_attempt(), _attempt(username="eve")]
    start = chain_head()

    response = alpha_client.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [str(attempt.pk) for attempt in attempts], "post": "yes"},
    )

    assert response.status_code == 302
    entries = entries_after(start)
    assert len(entries) == 2
    for entry in entries:
        assert CSRF_TOKEN not in _stored_text(entry)
        assert SESSION_TOKEN not in _stored_text(entry)


def test_admin_delete_of_totp_device_redacts_key(alpha_client):
    device = TOTPDevice.objects.create(user=admin_of("alpha"), name="phone", confirmed=True)
    start = chain_head()

    response = alpha_client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert device.key not in _stored_text(entry)
    assert entry.changes["key"] == [REDACTED, None]


def test_record_redacts_secrets_in_detail_and_changes(alpha):
    start = chain_head()

    record(
        AuditAction.OBJECT_UPDATED,
        actor=Actor.system_job("test.redaction"),
        changes={"api_key": ["old-api-key", "new-api-key"], "name": ["a", "b"]},
        detail={
            "refresh_token": "refresh-secret",
            "request": {"headers": "Authorization: Bearer bearer-secret\nAccept: */*"},
            "attempts": [{"password": "hunter2", "username": "anna"}],
            "url": "/api/v1/units/?access_token=query-secret&page=2",
        },
    )

    [entry] = entries_after(start)
    stored = _stored_text(entry)
    for secret in ("old-api-key", "new-api-key", "refresh-secret", "bearer-secret", "hunter2", "query-secret"):
        assert secret not in stored
    assert entry.changes["name"] == ["a", "b"]
    assert entry.detail["attempts"][0]["username"] == "anna"
    assert "Accept: */*" in entry.detail["request"]["headers"]
    assert entry.detail["url"].endswith("&page=2")


def test_record_keeps_identifiers_named_like_secrets(alpha):
    start = chain_head()
    detail = {
        "key": "supply_temp",
        "password_min_length": 12,
        "credential_id": "42",
        "tls_key_file": "/etc/thermacore/client.key",
        "session_timeout_minutes": 480,
        "alarm": "failed_login_burst:username=admin",
    }

    record(AuditAction.OBJECT_UPDATED, actor=Actor.system_job("test.redaction"), detail=detail)

    [entry] = entries_after(start)
    assert entry.detail == detail


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("admin_password_hash", True),
        ("csrfmiddlewaretoken", True),
        ("refreshToken", True),
        ("secret_encrypted", True),
        ("private_key_encrypted", True),
        ("hashed_key", True),
        ("HTTP_AUTHORIZATION", True),
        ("key", False),
        ("password_min_length", False),
        ("tls_key_file", False),
        ("credential_type", False),
        ("jti", False),
    ],
)
def test_secret_name_rule(name, secret):
    assert is_secret_name(name) is secret


def test_redact_keeps_none_of_created_secret():
    assert redact({"password": [None, "x"]}) == {"password": [None, REDACTED]}
