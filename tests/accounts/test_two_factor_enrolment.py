"""TOTP enrolment and removal: the otpauth:// link names the tenant, and both are in the audit trail."""

from urllib.parse import parse_qs, unquote, urlsplit

from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import TENANT_DOMAINS


def _current_code(device):
    return f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):06d}"


def test_otpauth_link_names_tenant(browser_as, user_of_role):
    browser = browser_as(Role.OPERATOR)

    browser.get("/accounts/two-factor/setup/")

    device = TOTPDevice.objects.get(user=user_of_role(Role.OPERATOR))
    link = urlsplit(device.config_url)
    assert unquote(link.path) == "/ThermaCore Alpha:operator-user"
    assert parse_qs(link.query)["issuer"] == ["ThermaCore Alpha"]


def test_enrolment_is_audited_without_key(browser_as, user_of_role):
    browser = browser_as(Role.OPERATOR)
    browser.get("/accounts/two-factor/setup/")
    device = TOTPDevice.objects.get(user=user_of_role(Role.OPERATOR), confirmed=False)
    start = chain_head()

    response = browser.post("/accounts/two-factor/setup/", {"otp_token": _current_code(device)})

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert entry.action == AuditAction.OBJECT_CREATED
    assert (entry.object_type, entry.object_id) == ("otp_totp.totpdevice", str(device.pk))
    assert entry.detail["event"] == "two_factor_enrolled"
    assert entry.detail["user"] == "operator-user"
    assert device.key not in str(entry.changes) + str(entry.detail)


def test_removal_in_admin_is_audited(browser_as, user_of_role):
    device = TOTPDevice.objects.create(user=user_of_role(Role.OPERATOR), name="Phone", confirmed=True)
    admin = browser_as(Role.ADMIN)
    start = chain_head()

    response = admin.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"},
                          HTTP_HOST=TENANT_DOMAINS["alpha"])

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert entry.action == AuditAction.OBJECT_DELETED
    assert entry.object_type == "otp_totp.totpdevice"
    assert entry.detail == {"event": "two_factor_removed", "user": "operator-user", "device": "Phone"}
    assert device.key not in str(entry.changes)
