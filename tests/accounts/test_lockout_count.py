"""The failure that reaches THERMACORE_LOGIN_FAILURE_LIMIT itself gets 429, as docs/accounts.md says."""

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from tests.accounts.conftest import create_user
from tests.conftest import TENANT_DOMAINS

LIMIT = settings.AXES_FAILURE_LIMIT


def _web_login(password):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    return client.post("/accounts/login/", {"username": "viewer-user", "password": password}).status_code


def _admin_login(password):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    return client.post("/admin/login/", {"username": "viewer-user", "password": password}).status_code


def _token(password):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    return client.post("/api/v1/auth/token/", {"username": "viewer-user", "password": password},
                       format="json").status_code


@pytest.mark.parametrize(("attempt", "rejected_status"), [(_web_login, 200), (_admin_login, 200), (_token, 401)])
def test_failure_at_limit_gets_429(alpha, attempt, rejected_status):
    create_user(Role.VIEWER)

    before_limit = [attempt("wrong-guess") for _ in range(LIMIT - 1)]
    at_limit = attempt("wrong-guess")

    assert before_limit == [rejected_status] * (LIMIT - 1)
    assert at_limit == 429
