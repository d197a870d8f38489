"""Session login lockout (django-axes, counted per tenant schema), password change and password reset."""

import re

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.core import mail
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from tests.accounts.conftest import ROLE_PASSWORD, create_user
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS

LIMIT = settings.AXES_FAILURE_LIMIT


def _web_login(username, password, schema="alpha"):
    client = Client(HTTP_HOST=TENANT_DOMAINS[schema])
    return client.post("/accounts/login/", {"username": username, "password": password})


def _token(username, password, schema="alpha"):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS[schema])
    return client.post("/api/v1/auth/token/", {"username": username, "password": password}, format="json")


@pytest.fixture
def viewer(alpha):
    return create_user(Role.VIEWER)


def test_web_login_succeeds_with_password(viewer):
    response = _web_login("viewer-user", ROLE_PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_web_login_locks_after_failures(viewer):
    for _ in range(LIMIT - 1):
        assert _web_login("viewer-user", "wrong-guess").status_code == 200

    locking = _web_login("viewer-user", "wrong-guess")
    correct = _web_login("viewer-user", ROLE_PASSWORD)

    assert locking.status_code == 429
    assert correct.status_code == 429
    assert "Too many failed logins" in correct.text
    assert "_auth_user_id" not in correct.client.session


def test_web_login_success_resets_failures(viewer):
    for _ in range(LIMIT - 1):
        _web_login("viewer-user", "wrong-guess")
    assert _web_login("viewer-user", ROLE_PASSWORD).status_code == 302

    for _ in range(LIMIT - 1):
        _web_login("viewer-user", "wrong-guess")

    assert _web_login("viewer-user", ROLE_PASSWORD).status_code == 302


def test_token_endpoint_counts_failures(viewer):
    for _ in range(LIMIT):
        assert _token("viewer-user", "wrong-guess").status_code in (401, 429)

    response = _token("viewer-user", ROLE_PASSWORD)

    assert response.status_code == 429
    assert "access" not in response.data
    assert "Too many failed logins" in response.data["detail"]


def test_failures_on_api_and_web_add_up(viewer):
    for _ in range(LIMIT - 1):
        _token("viewer-user", "wrong-guess")
    _web_login("viewer-user", "wrong-guess")

    assert _web_login("viewer-user", ROLE_PASSWORD).status_code == 429


def test_lockout_is_counted_per_tenant(alpha, beta):
    for _ in range(LIMIT):
        _web_login("admin", "wrong-guess", schema="alpha")

    on_alpha = _web_login("admin", ADMIN_PASSWORD, schema="alpha")
    on_beta = _web_login("admin", ADMIN_PASSWORD, schema="beta")

    assert on_alpha.status_code == 429
    assert on_beta.status_code == 302
    with schema_context("beta"):
        assert not AccessAttempt.objects.filter(username="admin", failures_since_start__gt=0).exists()
    with schema_context("alpha"):
        assert AccessAttempt.objects.get(username="admin").failures_since_start >= LIMIT


def test_deleting_access_attempt_unlocks(viewer):
    for _ in range(LIMIT):
        _web_login("viewer-user", "wrong-guess")
    connection.set_schema_to_public()
    with schema_context("alpha"):
        AccessAttempt.objects.filter(username="viewer-user").delete()

    assert _web_login("viewer-user", ROLE_PASSWORD).status_code == 302


def test_password_change_rejects_weak_password(browser_as):
    client = browser_as(Role.VIEWER)

    response = client.post(
        "/accounts/password_change/",
        {"old_password": ROLE_PASSWORD, "new_password1": "12345678", "new_password2": "12345678"},
    )

    assert response.status_code == 200
    assert "too common" in response.text
    assert "entirely numeric" in response.text


def test_password_change_sets_new_password(browser_as, user_of_role):
    client = browser_as(Role.VIEWER)
    new_password = "Gauge-needle-tremor-5521"

    response = client.post(
        "/accounts/password_change/",
        {"old_password": ROLE_PASSWORD, "new_password1": new_password, "new_password2": new_password},
    )

    user = user_of_role(Role.VIEWER)
    user.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password_change/done/"
    assert user.check_password(new_password)
    assert client.get("/").status_code == 200


def test_password_change_needs_login(alpha):
    response = Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).get("/accounts/password_change/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_password_reset_mails_link_on_tenant_domain(alpha):
    user = create_user(Role.OPERATOR, email="operator@alpha.example")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])

    requested = client.post("/accounts/password_reset/", {"email": "operator@alpha.example"})
    link = re.search(r"http://alpha\.localhost(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    new_password = "Valve-stem-packing-7720"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password})

    user.refresh_from_db()
    assert requested.status_code == 302
    assert mail.outbox[0].to == ["operator@alpha.example"]
    assert done.status_code == 302
    assert user.check_password(new_password)


def test_password_reset_link_is_single_use(alpha):
    create_user(Role.OPERATOR, email="operator@alpha.example")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.post("/accounts/password_reset/", {"email": "operator@alpha.example"})
    link = re.search(r"http://alpha\.localhost(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    new_password = "Valve-stem-packing-7720"
    client.post(form.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password})

    reused = Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).get(link, follow=True)

    assert "Link invalid" in reused.text


def test_reset_link_invalid_on_other_tenant(alpha, beta):
    create_user(Role.OPERATOR, email="operator@alpha.example")
    Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).post("/accounts/password_reset/", {"email": "operator@alpha.example"})
    link = re.search(r"http://alpha\.localhost(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)

    on_beta = Client(HTTP_HOST=TENANT_DOMAINS["beta"]).get(link, follow=True)

    assert "Link invalid" in on_beta.text


def test_password_reset_for_unknown_address_sends_nothing(alpha):
    response = Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).post(
        "/accounts/password_reset/", {"email": "nobody@alpha.example"}
    )

    assert response.status_code == 302
    assert mail.outbox == []


@pytest.mark.parametrize(("role", "status"), [(Role.ADMIN, 200), (Role.OPERATOR, 403), (Role.AUDITOR, 403)])
def test_lockout_records_need_manage_users(browser_as, role, status):
    response = browser_as(role).get("/admin/axes/accessattempt/")

    assert response.status_code == status


def test_admin_unlocks_account_in_admin(browser_as, viewer):
    for _ in range(LIMIT):
        _web_login("viewer-user", "wrong-guess")
    attempt = AccessAttempt.objects.get(username="viewer-user")

    deleted = browser_as(Role.ADMIN).post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})

    assert deleted.status_code == 302
    assert _web_login("viewer-user", ROLE_PASSWORD).status_code == 302
