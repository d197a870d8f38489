"""The same role decisions in the tenant's Django admin, the HTMX pages and the WebSocket consumer."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from apps.accounts.choices import Role
from apps.units.models import Unit
from tests.accounts.conftest import ROLE_PASSWORD
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of, refusal_code
from tests.factories import UnitFactory
from thermacore.asgi import application

PLANT_READERS = [Role.ADMIN, Role.OPERATOR, Role.VIEWER]


@pytest.mark.parametrize("role", list(Role))
def test_admin_index_opens_for_every_role(browser_as, role):
    response = browser_as(role).get("/admin/")

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("role", "changelist", "add"),
    [
        (Role.ADMIN, 200, 200),
        (Role.OPERATOR, 200, 403),
        (Role.VIEWER, 200, 403),
        (Role.AUDITOR, 403, 403),
    ],
)
def test_admin_unit_pages_follow_role(browser_as, role, changelist, add):
    client = browser_as(role)

    listed = client.get("/admin/units/unit/")
    add_form = client.get("/admin/units/unit/add/")

    assert listed.status_code == changelist
    assert add_form.status_code == add


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
def test_admin_change_by_reader_leaves_unit(browser_as, role):
    unit = UnitFactory(name="Boiler 1")
    client = browser_as(role)

    response = client.post(
        f"/admin/units/unit/{unit.pk}/change/",
        {"site": unit.site_id, "name": "Renamed", "kind": unit.kind, "status": unit.status},
    )
    deleted = client.post(f"/admin/units/unit/{unit.pk}/delete/", {"post": "yes"})

    assert response.status_code == 403
    assert deleted.status_code == 403
    assert Unit.objects.get(pk=unit.pk).name == "Boiler 1"


def test_admin_viewer_sees_no_add_link(browser_as):
    response = browser_as(Role.VIEWER).get("/admin/")

    assert "/admin/units/unit/" in response.text
    assert "/admin/units/unit/add/" not in response.text
    assert "/admin/accounts/user/" not in response.text


@pytest.mark.parametrize(("role", "status"), [(Role.ADMIN, 200), (Role.OPERATOR, 403), (Role.VIEWER, 403)])
def test_admin_user_list_needs_manage_users(browser_as, role, status):
    response = browser_as(role).get("/admin/accounts/user/")

    assert response.status_code == status


def test_admin_user_form_offers_role_not_superuser(browser_as, user_of_role):
    viewer = user_of_role(Role.VIEWER)

    response = browser_as(Role.ADMIN).get(f"/admin/accounts/user/{viewer.pk}/change/")

    assert 'name="role"' in response.text
    assert 'name="is_superuser"' not in response.text
    assert 'name="user_permissions"' not in response.text


def test_admin_sets_role_through_admin(browser_as, user_of_role):
    viewer = user_of_role(Role.VIEWER)

    response = browser_as(Role.ADMIN).post(
        f"/admin/accounts/user/{viewer.pk}/change/",
        {
            "username": viewer.username, "role": Role.OPERATOR, "is_active": "on",
            "last_login_0": "", "last_login_1": "", "date_joined_0": "2026-01-05", "date_joined_1": "10:00:00",
        },
    )

    viewer.refresh_from_db()
    assert response.status_code == 302
    assert viewer.role == Role.OPERATOR


def test_admin_login_accepts_viewer_without_staff_flag(alpha, user_of_role):
    user_of_role(Role.VIEWER)
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])

    response = client.post("/admin/login/?next=/admin/", {"username": "viewer-user", "password": ROLE_PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_admin_anonymous_is_sent_to_login(alpha):
    response = Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).get("/admin/units/unit/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("role", PLANT_READERS)
def test_live_pages_open_for_plant_readers(browser_as, role):
    unit = UnitFactory()
    client = browser_as(role)

    assert client.get("/").status_code == 200
    assert client.get(f"/units/{unit.pk}/").status_code == 200


def test_live_pages_forbidden_for_auditor(browser_as):
    unit = UnitFactory()
    client = browser_as(Role.AUDITOR)

    start = client.get("/")

    assert start.status_code == 302
    assert start["Location"] == "/audit/"
    assert client.get(f"/units/{unit.pk}/").status_code == 403


@pytest.mark.parametrize(("role", "shown"), [(Role.ADMIN, True), (Role.OPERATOR, False), (Role.VIEWER, False)])
def test_configuration_link_follows_role(browser_as, role, shown):
    response = browser_as(role).get("/")

    assert ('href="/admin/"' in response.text) is shown


def _live_socket(user):
    token = access_token_for("alpha", user)
    return WebsocketCommunicator(
        application,
        "/ws/live/?format=json",
        headers=[(b"host", TENANT_DOMAINS["alpha"].encode()), (b"authorization", f"Bearer {token}".encode())],
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(("role", "accepted"), [(Role.VIEWER, True), (Role.OPERATOR, True), (Role.AUDITOR, False)])
async def test_websocket_live_values_follow_role(committed_users, django_db_blocker, role, accepted):
    with django_db_blocker.unblock():
        communicator = await sync_to_async(_live_socket)(committed_users[role])

        if accepted:
            connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
            stays_open = await communicator.receive_nothing(timeout=0.3)
            await communicator.disconnect()
        else:
            code = await refusal_code(communicator)

    if accepted:
        assert connected is True
        assert stays_open is True
    else:
        assert code == 4403


def test_last_admin_cannot_demote_self(alpha):
    admin = admin_of("alpha")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(admin)

    response = client.post(
        f"/admin/accounts/user/{admin.pk}/change/",
        {
            "username": "admin", "role": Role.VIEWER, "is_active": "on",
            "date_joined_0": "2026-01-05", "date_joined_1": "10:00:00",
        },
    )

    admin.refresh_from_db()
    assert response.status_code == 200
    assert "last active Admin" in response.text
    assert admin.role == Role.ADMIN


def test_last_admin_cannot_be_deleted(alpha):
    admin = admin_of("alpha")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(admin)

    single = client.post(f"/admin/accounts/user/{admin.pk}/delete/", {"post": "yes"})
    bulk = client.post(
        "/admin/accounts/user/", {"action": "delete_selected", "_selected_action": [admin.pk], "post": "yes"}
    )

    assert single.status_code == 403
    assert bulk.status_code == 403
    assert type(admin).objects.filter(pk=admin.pk).exists()


def test_admin_demoted_when_another_admin_exists(browser_as, user_of_role):
    second_admin = user_of_role(Role.ADMIN)
    admin = admin_of("alpha")

    response = browser_as(Role.ADMIN).post(
        f"/admin/accounts/user/{admin.pk}/change/",
        {
            "username": "admin", "role": Role.OPERATOR, "is_active": "on",
            "date_joined_0": "2026-01-05", "date_joined_1": "10:00:00",
        },
    )

    admin.refresh_from_db()
    assert second_admin.role == Role.ADMIN
    assert response.status_code == 302
    assert admin.role == Role.OPERATOR
