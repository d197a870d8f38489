"""Each role lands on a page it may open after login, and a 403 page says what the role may do."""

import pytest
from django.test import Client

from apps.accounts.choices import Role
from tests.accounts.conftest import ROLE_PASSWORD, create_user
from tests.conftest import TENANT_DOMAINS
from tests.factories import UnitFactory


def _log_in(role):
    user = create_user(role)
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    response = client.post("/accounts/login/", {"username": user.username, "password": ROLE_PASSWORD}, follow=True)
    return response


@pytest.mark.parametrize(
    ("role", "landing"),
    [(Role.ADMIN, "/"), (Role.OPERATOR, "/"), (Role.VIEWER, "/"), (Role.AUDITOR, "/audit/")],
)
def test_login_lands_on_allowed_page(alpha, role, landing):
    response = _log_in(role)

    assert response.status_code == 200
    assert response.request["PATH_INFO"] == landing


def test_forbidden_page_names_role_and_pages(alpha):
    unit = UnitFactory()
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(create_user(Role.AUDITOR))

    response = client.get(f"/units/{unit.pk}/")

    assert response.status_code == 403
    assert "dashboards/403.html" in [template.name for template in response.templates]
    text = response.content.decode()
    assert "<strong>Auditor</strong>" in text
    assert "Read the audit log" in text
    assert "View dashboards" not in text
    assert '<a href="/audit/">Audit trail</a>' in text
    assert '<a href="/alarms/">Alarms</a>' in text


def test_audit_page_hides_live_link_from_auditor(alpha):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(create_user(Role.AUDITOR))

    response = client.get("/audit/")

    assert response.status_code == 200
    assert ">Live</a>" not in response.content.decode()
