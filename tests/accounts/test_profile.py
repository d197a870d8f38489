import pytest

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry


@pytest.fixture
def viewer_api(api_as):
    return api_as(Role.VIEWER)


def test_profile_shows_own_account(viewer_api, user_of_role):
    response = viewer_api.get("/api/v1/auth/me/")

    assert response.status_code == 200
    assert response.data["username"] == "viewer-user"
    assert response.data["role"] == "viewer"
    assert "is_staff" not in response.data
    assert "password" not in response.data


def test_profile_patch_changes_allowed_fields(viewer_api, user_of_role):
    response = viewer_api.patch(
        "/api/v1/auth/me/", {"first_name": "Ada", "last_name": "Shift", "email": "ada@alpha.example"}, format="json"
    )

    user = user_of_role(Role.VIEWER)
    user.refresh_from_db()
    assert response.status_code == 200
    assert (user.first_name, user.last_name, user.email) == ("Ada", "Shift", "ada@alpha.example")


@pytest.mark.parametrize(
    "forbidden",
    [{"is_staff": True}, {"is_superuser": True}, {"role": "admin"}, {"is_active": False}, {"username": "root"}],
)
def test_profile_patch_of_protected_field_is_rejected(viewer_api, user_of_role, forbidden):
    field = next(iter(forbidden))

    response = viewer_api.patch("/api/v1/auth/me/", {"first_name": "Ada", **forbidden}, format="json")

    user = user_of_role(Role.VIEWER)
    user.refresh_from_db()
    assert response.status_code == 400
    assert field in response.data
    assert user.first_name == ""
    assert user.role == Role.VIEWER
    assert user.is_staff is False
    assert user.is_superuser is False
    assert user.is_active is True
    assert user.username == "viewer-user"


def test_profile_put_is_not_allowed(viewer_api):
    response = viewer_api.put("/api/v1/auth/me/", {"first_name": "Ada"}, format="json")

    assert response.status_code == 405


def test_profile_invalid_email_names_field(viewer_api):
    response = viewer_api.patch("/api/v1/auth/me/", {"email": "not-an-address"}, format="json")

    assert response.status_code == 400
    assert "email" in response.data


def test_profile_change_is_audited(viewer_api, user_of_role):
    viewer_api.patch("/api/v1/auth/me/", {"last_name": "Shift"}, format="json")

    entry = AuditEntry.objects.filter(action=AuditAction.OBJECT_UPDATED).latest("sequence")

    assert entry.actor_id == str(user_of_role(Role.VIEWER).pk)
    assert entry.object_type == "accounts.user"
    assert entry.changes == {"last_name": ["", "Shift"]}


def test_profile_needs_login(api_as):
    response = api_as(None).get("/api/v1/auth/me/")

    assert response.status_code == 401
