"""JWTs of platform staff: issue, rotation and logout on the public domain, and isolation from tenant tokens."""

import pytest
from django.db import connection
from django_tenants.utils import schema_context
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from apps.accounts.tokens import LOGIN_CLAIM, TENANT_CLAIM
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS
from tests.tenants.test_platform_api import PLATFORM_HOST, STAFF_PASSWORD, TENANTS_URL, platform  # noqa: F401

TOKEN_URL = "/api/platform/v1/auth/token/"
REFRESH_URL = "/api/platform/v1/auth/token/refresh/"
LOGOUT_URL = "/api/platform/v1/auth/logout/"


def post(host, path, body):
    response = APIClient(HTTP_HOST=host).post(path, body, format="json")
    connection.set_schema_to_public()
    return response


def get_with_bearer(host, path, access):
    client = APIClient(HTTP_HOST=host)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    response = client.get(path)
    connection.set_schema_to_public()
    return response


def claims(token):
    # Unverified, because a blacklisted token fails verification.
    return RefreshToken(token, verify=False)


def obtain(username, password):
    return post(PLATFORM_HOST, TOKEN_URL, {"username": username, "password": password})


def tenant_pair(schema="alpha"):
    response = post(TENANT_DOMAINS[schema], "/api/v1/auth/token/", {"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200, response.content
    return response.json()


# Issue ------------------------------------------------------------------------------------------------------------


def test_staff_obtains_public_token_pair(platform):
    response = obtain("platform-staff", STAFF_PASSWORD)

    assert response.status_code == 200, response.content
    access = AccessToken(response.json()["access"])
    refresh = RefreshToken(response.json()["refresh"])
    assert access[TENANT_CLAIM] == "public"
    assert refresh[TENANT_CLAIM] == "public"
    assert access[LOGIN_CLAIM] == refresh[LOGIN_CLAIM]
    assert OutstandingToken.objects.filter(jti=refresh["jti"], user=platform["staff"]).exists()


def test_staff_token_calls_platform_api(platform):
    access = obtain("platform-staff", STAFF_PASSWORD).json()["access"]

    response = get_with_bearer(PLATFORM_HOST, TENANTS_URL, access)

    assert response.status_code == 200
    assert "alpha" in [tenant["schema_name"] for tenant in response.json()["results"]]


def test_non_staff_user_gets_no_token(platform):
    response = obtain("platform-plain", STAFF_PASSWORD)

    assert response.status_code == 401
    assert "Only platform staff" in response.json()["detail"]
    assert not OutstandingToken.objects.filter(user=platform["plain"]).exists()


def test_wrong_password_gets_no_token(platform):
    response = obtain("platform-staff", "not-the-password")

    assert response.status_code == 401
    assert not OutstandingToken.objects.exists()


def test_token_endpoints_404_on_tenant_domain(platform):
    response = post(TENANT_DOMAINS["alpha"], TOKEN_URL, {"username": "admin", "password": ADMIN_PASSWORD})

    assert response.status_code == 404


# Platform tokens on tenant domains, tenant tokens on the platform ------------------------------------------------


def test_platform_access_rejected_by_tenant_api(platform):
    access = obtain("platform-staff", STAFF_PASSWORD).json()["access"]

    response = get_with_bearer(TENANT_DOMAINS["alpha"], "/api/v1/units/", access)

    assert response.status_code == 401
    assert "another tenant" in response.json()["detail"]


def test_platform_refresh_rejected_by_tenant(platform):
    refresh = obtain("platform-staff", STAFF_PASSWORD).json()["refresh"]

    refreshed = post(TENANT_DOMAINS["alpha"], "/api/v1/auth/token/refresh/", {"refresh": refresh})
    logged_out = post(TENANT_DOMAINS["alpha"], "/api/v1/auth/logout/", {"refresh": refresh})

    assert refreshed.status_code == 401
    assert logged_out.status_code == 401
    assert not BlacklistedToken.objects.filter(token__jti=claims(refresh)["jti"]).exists()


def test_tenant_access_rejected_by_platform_api(platform):
    access = tenant_pair()["access"]

    response = get_with_bearer(PLATFORM_HOST, TENANTS_URL, access)

    assert response.status_code == 401


def test_tenant_refresh_rejected_by_platform(platform):
    refresh = tenant_pair()["refresh"]

    refreshed = post(PLATFORM_HOST, REFRESH_URL, {"refresh": refresh})
    logged_out = post(PLATFORM_HOST, LOGOUT_URL, {"refresh": refresh})

    assert refreshed.status_code == 401
    assert "another tenant" in refreshed.json()["detail"]
    assert logged_out.status_code == 401
    # The tenant's refresh token still works on its own domain.
    assert post(TENANT_DOMAINS["alpha"], "/api/v1/auth/token/refresh/", {"refresh": refresh}).status_code == 200


def test_tenant_admin_gets_no_platform_token(platform):
    # User ids repeat across schemas; the tenant admin's credentials mean nothing in the public schema.
    response = obtain("admin", ADMIN_PASSWORD)

    assert response.status_code == 401


# Rotation and logout ----------------------------------------------------------------------------------------------


def test_refresh_rotates_and_blacklists_old_token(platform):
    first = obtain("platform-staff", STAFF_PASSWORD).json()

    rotated = post(PLATFORM_HOST, REFRESH_URL, {"refresh": first["refresh"]})
    reused = post(PLATFORM_HOST, REFRESH_URL, {"refresh": first["refresh"]})

    assert rotated.status_code == 200, rotated.content
    second = rotated.json()
    assert second["refresh"] != first["refresh"]
    assert claims(second["refresh"])[TENANT_CLAIM] == "public"
    assert claims(second["refresh"])[LOGIN_CLAIM] == claims(first["refresh"])[LOGIN_CLAIM]
    assert BlacklistedToken.objects.filter(token__jti=claims(first["refresh"])["jti"]).exists()
    assert reused.status_code == 401
    assert get_with_bearer(PLATFORM_HOST, TENANTS_URL, second["access"]).status_code == 200


def test_logout_blacklists_refresh_token(platform):
    pair = obtain("platform-staff", STAFF_PASSWORD).json()

    logged_out = post(PLATFORM_HOST, LOGOUT_URL, {"refresh": pair["refresh"]})
    refreshed = post(PLATFORM_HOST, REFRESH_URL, {"refresh": pair["refresh"]})

    assert logged_out.status_code == 200, logged_out.content
    assert refreshed.status_code == 401
    assert BlacklistedToken.objects.filter(token__jti=claims(pair["refresh"])["jti"]).exists()
    # Access tokens stay valid until they expire, as on tenant domains.
    assert get_with_bearer(PLATFORM_HOST, TENANTS_URL, pair["access"]).status_code == 200


def test_refresh_rejected_after_staff_rights_removed(platform):
    pair = obtain("platform-staff", STAFF_PASSWORD).json()
    staff = platform["staff"]
    staff.is_staff = False
    staff.save(update_fields=["is_staff"])

    refreshed = post(PLATFORM_HOST, REFRESH_URL, {"refresh": pair["refresh"]})

    assert refreshed.status_code == 401
    assert "no longer platform staff" in refreshed.json()["detail"]


def test_refresh_rejected_after_password_change(platform):
    pair = obtain("platform-staff", STAFF_PASSWORD).json()
    staff = platform["staff"]
    staff.set_password("Another-plant-room-key-9931")
    staff.save(update_fields=["password"])

    refreshed = post(PLATFORM_HOST, REFRESH_URL, {"refresh": pair["refresh"]})

    assert refreshed.status_code == 401


def test_tenant_blacklist_tables_stay_separate(platform):
    pair = tenant_pair()
    jti = claims(pair["refresh"])["jti"]

    with schema_context("alpha"):
        in_alpha = OutstandingToken.objects.filter(jti=jti).exists()
    in_public = OutstandingToken.objects.filter(jti=jti).exists()

    assert in_alpha
    assert not in_public


@pytest.mark.parametrize("path", [TOKEN_URL, REFRESH_URL, LOGOUT_URL])
def test_openapi_schema_lists_token_endpoints(platform, path):
    client = APIClient(HTTP_HOST=PLATFORM_HOST)
    client.force_login(platform["staff"])

    paths = client.get("/api/platform/schema/", {"format": "json"}).json()["paths"]

    assert paths[path]["post"]["tags"] == ["platform"]
