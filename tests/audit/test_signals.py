"""Logins, failed logins and logouts write audit entries, and so do the JWT issue and refresh helpers."""

from django.test import Client, RequestFactory
from rest_framework.test import APIClient, APIRequestFactory

from apps.accounts.tokens import TenantTokenObtainPairSerializer
from apps.audit.choices import ActorType, AuditAction, Outcome
from apps.audit.signals import record_token_issued, record_token_refreshed
from tests.audit.conftest import entries_after
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS, admin_of


def browser():
    return Client(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR="192.0.2.10", HTTP_USER_AGENT="Firefox/140")


def test_login_records_user_and_address(head):
    response = browser().post("/accounts/login/", {"username": "admin", "password": ADMIN_PASSWORD})

    [entry] = entries_after(head)
    assert response.status_code == 302
    assert entry.action == AuditAction.LOGIN
    assert (entry.actor_type, entry.actor_id) == (ActorType.USER, str(admin_of("alpha").pk))
    assert entry.source_ip == "192.0.2.10"
    assert entry.user_agent == "Firefox/140"


def test_failed_login_records_username_without_password(head):
    browser().post("/accounts/login/", {"username": "admin", "password": "wrong-guess-1"})

    entries = [entry for entry in entries_after(head) if entry.action == AuditAction.LOGIN_FAILED]
    assert len(entries) == 1
    assert entries[0].outcome == Outcome.FAILURE
    assert (entries[0].actor_type, entries[0].actor_name) == (ActorType.ANONYMOUS, "admin")
    assert "wrong-guess-1" not in str(entries[0].detail)


def test_logout_records_user(head):
    client = browser()
    client.post("/accounts/login/", {"username": "admin", "password": ADMIN_PASSWORD})

    client.post("/accounts/logout/")

    assert [entry.action for entry in entries_after(head)] == [AuditAction.LOGIN, AuditAction.LOGOUT]


def test_token_helpers_record_issue_and_refresh(head):
    user = admin_of("alpha")
    request = APIRequestFactory().post("/api/v1/auth/token/", REMOTE_ADDR="192.0.2.11")
    refresh = TenantTokenObtainPairSerializer.get_token(user)

    record_token_issued(user, request)
    record_token_refreshed(refresh, request)

    issued, refreshed = entries_after(head)
    assert issued.action == AuditAction.TOKEN_ISSUED
    assert issued.actor_name == "admin"
    assert issued.source_ip == "192.0.2.11"
    assert refreshed.action == AuditAction.TOKEN_REFRESHED
    assert (refreshed.actor_id, refreshed.actor_name) == (str(user.pk), "admin")
    assert refreshed.detail == {"jti": refresh["jti"]}


def test_failed_token_request_records_failed_login(head):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])

    response = client.post("/api/v1/auth/token/", {"username": "admin", "password": "nope"}, format="json")

    actions = [entry.action for entry in entries_after(head)]
    assert response.status_code == 401
    assert AuditAction.LOGIN_FAILED in actions
    assert AuditAction.TOKEN_ISSUED not in actions


def test_lockout_signal_records_denied_entry(head):
    from axes.signals import user_locked_out

    request = RequestFactory().post("/accounts/login/", REMOTE_ADDR="192.0.2.12")

    user_locked_out.send("axes", request=request, username="admin", ip_address="192.0.2.12")

    [entry] = entries_after(head)
    assert entry.action == AuditAction.LOCKOUT
    assert entry.outcome == Outcome.DENIED
    assert entry.actor_name == "admin"
    assert entry.source_ip == "192.0.2.12"


def test_repeated_failed_logins_record_lockout(head, settings):
    client = browser()

    for _attempt in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "admin", "password": "wrong-guess-2"})

    actions = [entry.action for entry in entries_after(head)]
    assert actions.count(AuditAction.LOGIN_FAILED) == settings.AXES_FAILURE_LIMIT
    assert actions.count(AuditAction.LOCKOUT) == 1
