"""The user admin records role changes and password changes, never the password itself."""

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction
from apps.audit.services import REDACTED
from tests.audit.conftest import chain_head, entries_after
from tests.audit.test_admin_coverage import form_data, model_admin_for

NEW_PASSWORD = "Feed-pump-spare-4711"


@pytest.fixture
def operator(alpha):
    return get_user_model().objects.create_user(username="olga", password="Olga-old-pass-4711", role=Role.OPERATOR)


def test_role_change_records_before_and_after(alpha_client, operator):
    data = form_data(model_admin_for("accounts.user"), operator)
    data["role"] = Role.AUDITOR
    start = chain_head()

    response = alpha_client.post(f"/admin/accounts/user/{operator.pk}/change/", data)

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert (entry.action, entry.object_id) == (AuditAction.OBJECT_UPDATED, str(operator.pk))
    assert entry.changes == {"role": [Role.OPERATOR, Role.AUDITOR]}


def test_password_change_recorded_redacted(alpha_client, operator):
    start = chain_head()

    response = alpha_client.post(
        f"/admin/accounts/user/{operator.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )

    assert response.status_code == 302
    operator.refresh_from_db()
    assert operator.check_password(NEW_PASSWORD)
    [entry] = entries_after(start)
    assert (entry.action, entry.object_id, entry.actor_name) == (AuditAction.OBJECT_UPDATED, str(operator.pk), "admin")
    assert entry.changes == {"password": [REDACTED, REDACTED]}
    assert entry.detail == {"event": "password_changed"}
    assert NEW_PASSWORD not in str(entry.changes) + str(entry.detail)


def test_invalid_password_change_records_nothing(alpha_client, operator):
    start = chain_head()

    response = alpha_client.post(
        f"/admin/accounts/user/{operator.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": "something-else", "usable_password": "true"},
    )

    assert response.status_code == 200
    assert entries_after(start) == []


def test_user_add_records_no_password(alpha_client):
    start = chain_head()

    response = alpha_client.post(
        "/admin/accounts/user/add/",
        {"username": "newbie", "role": Role.VIEWER, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD,
         "usable_password": "true"},
    )

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert (entry.action, entry.object_repr) == (AuditAction.OBJECT_CREATED, "newbie")
    assert entry.changes["password"] == [None, REDACTED]
    assert entry.changes["role"] == [None, Role.VIEWER]
