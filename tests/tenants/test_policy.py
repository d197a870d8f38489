"""Per-tenant security policy: password length, session timeout, API networks and the two-factor step."""

import html

import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.password_validation import password_validators_help_texts, validate_password
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.tenants.policy import TenantSecurityPolicyMiddleware
from tests.accounts.conftest import ROLE_PASSWORD
from tests.conftest import TENANT_DOMAINS, access_token_for, admin_of


def current_code(device):
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"


def reset_throttle(device):
    # django-otp delays the next attempt after a wrong code; the test does not wait for it.
    device.refresh_from_db()
    device.throttle_reset()


def test_wrong_code_delays_next_attempt(alpha_settings, browser_as, user_of_role):
    alpha_settings(two_factor_roles=[Role.OPERATOR])
    browser = browser_as("operator")
    device = TOTPDevice.objects.create(user=user_of_role("operator"), name="phone", confirmed=True)
    browser.post("/accounts/two-factor/", {"otp_device": device.persistent_id, "otp_token": "000000"})

    response = browser.post("/accounts/two-factor/", {"otp_device": device.persistent_id,
                                                      "otp_token": current_code(device)})

    assert response.status_code == 200
    assert DEVICE_ID_SESSION_KEY not in browser.session


def test_password_shorter_than_tenant_minimum_is_rejected(alpha, alpha_settings):
    alpha_settings(password_min_length=20)

    with pytest.raises(ValidationError) as caught:
        validate_password("Boiler-room-4711-x")

    assert "This password is too short. It must contain at least 20 characters." in caught.value.messages


def test_password_of_tenant_minimum_length_is_accepted(alpha, alpha_settings):
    alpha_settings(password_min_length=20)

    validate_password("Boiler-room-4711-xyz")


def test_password_help_text_names_tenant_minimum(alpha, alpha_settings):
    alpha_settings(password_min_length=16)

    assert "Your password must contain at least 16 characters." in password_validators_help_texts()


def test_password_change_page_uses_tenant_minimum(alpha, alpha_settings, browser_as):
    alpha_settings(password_min_length=24)
    browser = browser_as("viewer")

    response = browser.post("/accounts/password_change/", {
        "old_password": ROLE_PASSWORD, "new_password1": "Short-but-fine-4711", "new_password2": "Short-but-fine-4711",
    })

    assert response.status_code == 200
    assert "It must contain at least 24 characters." in response.text


def test_password_minimum_below_8_is_invalid(alpha):
    alpha.password_min_length = 6

    with pytest.raises(ValidationError) as caught:
        alpha.full_clean()

    assert "password_min_length" in caught.value.message_dict


def test_public_schema_uses_configured_minimum(db):
    connection.set_schema_to_public()

    with pytest.raises(ValidationError) as caught:
        validate_password("Eleven-4711")

    assert "It must contain at least 12 characters." in caught.value.messages[0]


def test_session_expiry_follows_tenant_timeout(alpha, alpha_settings, browser_as):
    alpha_settings(session_timeout_minutes=15)
    browser = browser_as("viewer")

    browser.get("/")

    assert browser.session.get_expiry_age() == 15 * 60


def test_api_from_disallowed_network_is_403_naming_address(alpha_api, alpha_settings):
    alpha_settings(api_allowed_networks=["10.20.0.0/16", "2001:db8::/32"])

    response = alpha_api.get("/api/v1/sites/")

    assert response.status_code == 403
    assert response.json() == {
        "detail": "API requests from 127.0.0.1 are not allowed for tenant 'alpha'; allowed networks are "
        "10.20.0.0/16, 2001:db8::/32. Ask the platform operator to add your network.",
        "code": "network_not_allowed",
    }


def test_api_from_allowed_network_passes(alpha_api, alpha_settings):
    alpha_settings(api_allowed_networks=["10.20.0.0/16", "127.0.0.0/8"])

    response = alpha_api.get("/api/v1/sites/")

    assert response.status_code == 200


def test_network_rule_leaves_pages_alone(alpha_client, alpha_settings):
    alpha_settings(api_allowed_networks=["10.20.0.0/16"])

    response = alpha_client.get("/")

    assert response.status_code == 200


def test_token_endpoint_is_behind_network_rule(alpha, alpha_settings):
    alpha_settings(api_allowed_networks=["10.20.0.0/16"])
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])

    response = client.post("/api/v1/auth/token/", {"username": "admin", "password": "x"}, format="json")

    assert response.status_code == 403
    assert response.json()["code"] == "network_not_allowed"


@pytest.mark.parametrize("network", ["10.20.0.1/16", "10.20.0.0/33", "intranet", "10.20.0.0/16 "])
def test_invalid_network_is_rejected(alpha, network):
    alpha.api_allowed_networks = [network]

    with pytest.raises(ValidationError) as caught:
        alpha.full_clean()

    assert repr(network) in str(caught.value.message_dict["api_allowed_networks"])


def test_role_with_two_factor_is_sent_to_setup(alpha_settings, browser_as):
    alpha_settings(two_factor_roles=[Role.OPERATOR])
    browser = browser_as("operator")

    page = browser.get("/alarms/")
    verify = browser.get(page["Location"])

    assert page.status_code == 302
    assert page["Location"] == "/accounts/two-factor/?next=%2Falarms%2F"
    assert verify.status_code == 302
    assert verify["Location"].startswith("/accounts/two-factor/setup/")


def test_role_without_two_factor_is_not_asked(alpha_settings, browser_as):
    alpha_settings(two_factor_roles=[Role.ADMIN])
    browser = browser_as("viewer")

    response = browser.get("/alarms/")

    assert response.status_code == 200


def test_two_factor_setup_confirms_device_and_verifies_session(alpha_settings, browser_as, user_of_role):
    alpha_settings(two_factor_roles=[Role.OPERATOR])
    browser = browser_as("operator")
    page = browser.get("/accounts/two-factor/setup/?next=/alarms/")
    device = TOTPDevice.objects.get(user=user_of_role("operator"))

    wrong = browser.post("/accounts/two-factor/setup/", {"otp_token": "000000", "next": "/alarms/"})
    reset_throttle(device)
    right = browser.post("/accounts/two-factor/setup/", {"otp_token": current_code(device), "next": "/alarms/"})
    after = browser.get("/alarms/")

    assert page.status_code == 200
    assert html.escape(device.config_url) in page.text
    assert "The code does not match" in wrong.text
    assert right.status_code == 302
    assert right["Location"] == "/alarms/"
    device.refresh_from_db()
    assert device.confirmed
    assert after.status_code == 200


def test_login_with_device_needs_current_code(alpha_settings, user_of_role):
    alpha_settings(two_factor_roles=[Role.ADMIN])
    admin = admin_of("alpha")
    device = TOTPDevice.objects.create(user=admin, name="phone", confirmed=True)
    browser = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])

    login = browser.post("/accounts/login/", {"username": "admin", "password": "Correct-horse-battery-4711"})
    admin_page = browser.get("/admin/")
    wrong = browser.post("/accounts/two-factor/", {"otp_device": device.persistent_id, "otp_token": "000000",
                                                   "next": "/admin/"})
    reset_throttle(device)
    right = browser.post("/accounts/two-factor/", {"otp_device": device.persistent_id,
                                                   "otp_token": current_code(device), "next": "/admin/"})

    assert login.status_code == 302
    assert admin_page.status_code == 302
    assert admin_page["Location"] == "/accounts/two-factor/?next=%2Fadmin%2F"
    assert wrong.status_code == 200
    assert right.status_code == 302
    assert right["Location"] == "/admin/"
    assert browser.get("/admin/").status_code == 200


def test_session_api_call_without_second_factor_is_403(alpha_settings, browser_as):
    alpha_settings(two_factor_roles=[Role.VIEWER])
    browser = browser_as("viewer")

    response = browser.get("/api/v1/sites/")

    assert response.status_code == 403
    assert response.json()["code"] == "two_factor_required"


def test_bearer_token_is_not_asked_for_second_factor(alpha, alpha_settings):
    alpha_settings(two_factor_roles=[Role.ADMIN])
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")

    response = client.get("/api/v1/sites/")

    assert response.status_code == 200


def test_next_pointing_elsewhere_is_ignored(alpha_settings, browser_as, user_of_role):
    alpha_settings(two_factor_roles=[Role.OPERATOR])
    browser = browser_as("operator")
    device = TOTPDevice.objects.create(user=user_of_role("operator"), name="phone", confirmed=True)

    response = browser.post("/accounts/two-factor/", {"otp_device": device.persistent_id,
                                                      "otp_token": current_code(device),
                                                      "next": "https://attacker.example/"})

    assert response.status_code == 302
    assert response["Location"] == "/"


def time_zone_during_request(tenant, path):
    seen = {}

    def view(request):
        seen["zone"] = timezone.get_current_timezone_name()
        return HttpResponse("ok")

    request = RequestFactory().get(path)
    request.tenant = tenant
    request.user = AnonymousUser()
    TenantSecurityPolicyMiddleware(view)(request)
    return seen["zone"]


def test_pages_use_tenant_time_zone(alpha, alpha_settings):
    tenant = alpha_settings(time_zone="Europe/Berlin")
    connection.set_tenant(tenant)

    assert time_zone_during_request(tenant, "/alarms/") == "Europe/Berlin"
    assert time_zone_during_request(tenant, "/api/v1/sites/") == "UTC"
    assert timezone.get_current_timezone_name() == "UTC"
