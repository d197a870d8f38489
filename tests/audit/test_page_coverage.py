"""Every server-rendered page of a tenant that changes something writes exactly one matching audit entry.

The pages come from the tenant URLconf, without the REST API and the admin
(tests/audit/test_api_coverage.py and test_admin_coverage.py cover those),
so a new page fails here until it has a case or is listed as read-only.
"""

import re
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.choices import Role
from apps.alarms.models import Alarm
from apps.audit.choices import AuditAction, Outcome
from apps.audit.services import REDACTED
from tests.audit.conftest import chain_head, entries_after
from tests.audit.test_api_coverage import make_alarm
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS, admin_of

SKIPPED_PREFIXES = ("api/", "admin/")
HTMX = {"HTTP_HX_REQUEST": "true"}
USER_PASSWORD = "Flue-gas-damper-6631"

# Pages that change nothing, with the reason.
READ_ONLY_PAGES = {
    "dashboards:live": "shows live values",
    "dashboards:unit_detail": "shows a unit's values and trends",
    "alarms:list": "lists alarms",
    "alarms:banner": "shows the counts of unacknowledged alarms",
    "audit:entries": "lists audit entries",
    "audit:export-status": "shows the progress of an export, which was recorded when it started",
    "audit:export-file": "downloads a prepared export, which was recorded when it started",
    "audit:export-manifest": "downloads the manifest of a prepared export",
    "password_change_done": "confirms a password change, which the change page recorded",
    "password_reset_done": "confirms that a reset mail was sent",
    "password_reset_complete": "confirms a reset, which the confirm page recorded",
    "password_reset": "mails a reset link and changes nothing; the password set with the link is recorded",
}


def page_names(patterns, prefix="", namespace=""):
    """Yield (route, namespaced url name) of every page in the URLconf."""
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from page_names(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern) and entry.name:
            yield prefix + str(entry.pattern), namespace + entry.name


def tenant_pages():
    return {
        name for route, name in page_names(get_resolver("thermacore.urls").url_patterns)
        if not route.startswith(SKIPPED_PREFIXES) and name not in ("schema", "swagger-ui")
    }


@dataclass
class PagePost:
    """A POST to a page and the entry it must write."""

    client: Client
    url: str
    data: dict
    status: int
    action: str
    object_type: str
    object_id: str
    actor_name: str
    outcome: str = Outcome.SUCCESS
    headers: dict | None = None


def admin_client():
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(admin_of("alpha"))
    return client


def user_client(**fields):
    user = get_user_model().objects.create_user(
        username=f"page-{Role.OPERATOR}-{timezone.now().timestamp()}", password=USER_PASSWORD, role=Role.OPERATOR,
        **fields,
    )
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(user)
    return user, client


def alarm_case(name):
    if name == "unshelve":
        alarm = make_alarm("shelved", shelved_until=timezone.now() + timezone.timedelta(hours=1), shelve_reason="t")
    else:
        alarm = make_alarm("active_unack")
    data = {"comment": "Checked on site", "minutes": "30"} if name == "shelve" else {"comment": "Checked on site"}
    action = {"acknowledge": AuditAction.ALARM_ACKNOWLEDGED, "shelve": AuditAction.ALARM_SHELVED,
              "unshelve": AuditAction.ALARM_UNSHELVED}[name]
    return PagePost(admin_client(), f"/alarms/{alarm.pk}/{name}/", data, 200, action, "alarms.alarm", str(alarm.pk),
                    "admin", headers=HTMX)


def start_export_case():
    return PagePost(admin_client(), "/audit/exports/", {"format": "csv"}, 200, AuditAction.AUDIT_EXPORTED, "", "",
                    "admin", headers=HTMX)


def login_case():
    return PagePost(Client(HTTP_HOST=TENANT_DOMAINS["alpha"]), "/accounts/login/",
                    {"username": "admin", "password": ADMIN_PASSWORD}, 302, AuditAction.LOGIN, "accounts.user",
                    str(admin_of("alpha").pk), "admin")


def logout_case():
    return PagePost(admin_client(), "/accounts/logout/", {}, 302, AuditAction.LOGOUT, "accounts.user",
                    str(admin_of("alpha").pk), "admin")


def two_factor_setup_case():
    user, client = user_client()
    client.get("/accounts/two-factor/setup/")
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    token = f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):06d}"
    return PagePost(client, "/accounts/two-factor/setup/", {"otp_token": token}, 302, AuditAction.OBJECT_CREATED,
                    "otp_totp.totpdevice", str(device.pk), user.username)


def two_factor_wrong_code_case():
    user, client = user_client()
    device = TOTPDevice.objects.create(user=user, name="Phone", confirmed=True)
    right = totp(device.bin_key, device.step, device.t0, device.digits, device.drift)
    wrong = f"{(right + 1) % 10**6:06d}"
    return PagePost(client, "/accounts/two-factor/", {"otp_token": wrong}, 200, AuditAction.LOGIN_FAILED,
                    "accounts.user", str(user.pk), user.username, Outcome.FAILURE)


def password_change_case():
    user, client = user_client()
    new = "Boiler-feed-pump-7741"
    return PagePost(client, "/accounts/password_change/",
                    {"old_password": USER_PASSWORD, "new_password1": new, "new_password2": new}, 302,
                    AuditAction.OBJECT_UPDATED, "accounts.user", str(user.pk), user.username)


def password_reset_confirm_case():
    user, _client = user_client(email="reset@alpha.example")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.post("/accounts/password_reset/", {"email": "reset@alpha.example"})
    link = re.search(r"http://alpha\.localhost(/accounts/reset/\S+/)", mail.outbox[-1].body).group(1)
    form = client.get(link, follow=True)
    new = "Valve-stem-packing-7720"
    return PagePost(client, form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}, 302,
                    AuditAction.OBJECT_UPDATED, "accounts.user", str(user.pk), user.username)


PAGE_CASES = {
    "alarms:acknowledge": lambda: alarm_case("acknowledge"),
    "alarms:shelve": lambda: alarm_case("shelve"),
    "alarms:unshelve": lambda: alarm_case("unshelve"),
    "audit:start-export": start_export_case,
    "login": login_case,
    "logout": logout_case,
    "two_factor_setup": two_factor_setup_case,
    "two_factor_verify": two_factor_wrong_code_case,
    "password_change": password_change_case,
    "password_reset_confirm": password_reset_confirm_case,
}


def test_pages_have_cases():
    pages = tenant_pages()

    assert "alarms:acknowledge" in pages
    assert sorted(pages - set(PAGE_CASES) - set(READ_ONLY_PAGES)) == [], (
        "These pages have no audit case; add one to PAGE_CASES or READ_ONLY_PAGES."
    )
    assert sorted((set(PAGE_CASES) | set(READ_ONLY_PAGES)) - pages) == [], "These pages are gone."


@pytest.mark.parametrize("name", sorted(PAGE_CASES))
def test_page_post_writes_one_entry(alpha, name):
    case = PAGE_CASES[name]()
    start = chain_head()

    response = case.client.post(case.url, case.data, **(case.headers or {}))

    assert response.status_code == case.status, response.content[:500]
    entries = entries_after(start)
    assert len(entries) == 1, [str(entry) for entry in entries]
    [entry] = entries
    assert (entry.action, entry.outcome) == (case.action, case.outcome)
    assert (entry.object_type, entry.object_id) == (case.object_type, case.object_id)
    assert entry.actor_name == case.actor_name
    assert entry.request_id
    if entry.changes.get("password"):
        assert entry.changes["password"] == [REDACTED, REDACTED]


def test_password_change_page_hides_password(alpha):
    case = password_change_case()
    start = chain_head()

    case.client.post(case.url, case.data)

    [entry] = entries_after(start)
    assert entry.changes == {"password": [REDACTED, REDACTED]}
    assert entry.detail == {"event": "password_changed"}
    assert case.data["new_password1"] not in str(entry.detail) + str(entry.changes)


def test_rejected_password_change_writes_nothing(alpha):
    case = password_change_case()
    start = chain_head()

    response = case.client.post(case.url, {**case.data, "old_password": "wrong"})

    assert response.status_code == 200
    assert entries_after(start) == []


def test_alarm_page_comment_recorded(alpha):
    case = alarm_case("shelve")
    start = chain_head()

    case.client.post(case.url, case.data, **HTMX)

    [entry] = entries_after(start)
    assert "Checked on site" in str(entry.detail)
    assert Alarm.objects.get(pk=entry.object_id).state == "shelved"
