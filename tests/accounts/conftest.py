"""Users of each role in tenant alpha, and clients that act as them."""

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from tests.conftest import TENANT_DOMAINS, access_token_for

ROLE_PASSWORD = "Plant-room-key-8842"


def create_user(role, username=None, **fields):
    """Create a user with the role in the schema the connection is on."""
    return get_user_model().objects.create_user(
        username=username or f"{role}-user", password=ROLE_PASSWORD, role=role, **fields
    )


@pytest.fixture
def user_of_role(alpha):
    """Return a function that creates (once per role) a user of that role in alpha."""
    created = {}

    def get(role):
        if role not in created:
            created[role] = create_user(Role(role))
        return created[role]

    return get


@pytest.fixture
def api_as(alpha, user_of_role):
    """Return a function giving an API client on alpha with a bearer token of a user of the role."""

    def make(role):
        client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
        if role is not None:
            token = access_token_for("alpha", user_of_role(role))
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        connection.set_tenant(alpha)
        return client

    return make


@pytest.fixture
def browser_as(alpha, user_of_role):
    """Return a function giving a browser client on alpha logged in as a user of the role."""

    def make(role):
        client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
        client.force_login(user_of_role(role))
        connection.set_tenant(alpha)
        return client

    return make


@pytest.fixture
def committed_users(django_db_setup, django_db_blocker):
    """Users of every role committed in alpha, for consumers that read them from other threads."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        users = {role: create_user(role, username=f"committed-{role}") for role in Role}
    yield users
    with django_db_blocker.unblock(), schema_context("alpha"):
        get_user_model().objects.filter(pk__in=[user.pk for user in users.values()]).delete()
