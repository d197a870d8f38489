"""Every add, change, delete and bulk delete in the tenant admin writes exactly one matching audit entry.

The model admins come from the admin site's registry, so a new admin that
lets the tenant admin write fails here until it records its changes or is
listed in NOT_YET_AUDITED with the reason.
"""

import uuid
from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.forms.models import model_to_dict
from django.test import RequestFactory
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.accounts.choices import Role
from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm, AlarmRule, NotificationTarget
from apps.alarms.notifications import create_notification_target
from apps.audit.choices import AuditAction
from apps.audit.mixins import AuditedModelAdminMixin
from apps.audit.models import AuditSettings
from apps.protocols.certificates import generate_certificate, import_certificate, import_crl
from apps.protocols.models import PollGroup
from apps.protocols.profiles import export_profile
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import admin_of
from tests.factories import DeviceFactory, PointFactory, SensorFactory, SiteFactory, UnitFactory
from tests.protocols.test_revocation import make_ca, make_crl, pem

# Admins that let a tenant admin write but do not record their changes yet, with the reason.
NOT_YET_AUDITED = {}

def build_user():
    return get_user_model().objects.create_user(
        username=f"user-{uuid.uuid4().hex[:8]}", password=USER_PASSWORD, role=Role.OPERATOR
    )


def build_alarm_rule():
    return AlarmRule.objects.create(sensor=SensorFactory(), condition="hi", limit=90.0)


def build_alarm():
    rule = build_alarm_rule()
    now = timezone.now()
    return Alarm.objects.create(
        rule=rule, unit_id=rule.sensor.unit_id, priority=rule.priority, message=rule.text,
        state=AlarmState.ACTIVE_UNACKNOWLEDGED, condition_started_at=now, activated_at=now,
    )


def build_access_attempt():
    return AccessAttempt.objects.create(
        username="mallory", ip_address="192.0.2.66", user_agent="curl", path_info="/accounts/login/",
        get_data="", post_data="", http_accept="*/*", failures_since_start=3,
    )


def build_access_log():
    return AccessLog.objects.create(
        username="anna", ip_address="192.0.2.67", user_agent="Firefox", path_info="/accounts/login/",
        http_accept="*/*",
    )


def build_access_failure_log():
    return AccessFailureLog.objects.create(
        username="mallory", ip_address="192.0.2.68", user_agent="curl", path_info="/accounts/login/",
        http_accept="*/*", locked_out=False,
    )


def build_blacklisted_token():
    outstanding = OutstandingToken.objects.create(
        user=admin_of("alpha"), jti=uuid.uuid4().hex, token="header.payload.signature",
        created_at=timezone.now(), expires_at=timezone.now() + timedelta(days=1),
    )
    return BlacklistedToken.objects.create(token=outstanding)


def build_totp_device():
    return TOTPDevice.objects.create(user=admin_of("alpha"), name="Phone", confirmed=True)


def build_notification_target():
    return NotificationTarget.objects.create(name="On-call mail", kind="email", email="oncall@alpha.example")


def build_audit_settings():
    return AuditSettings.objects.create(failed_login_limit=7)


def build_poll_group():
    return PollGroup.objects.create(name=f"group-{uuid.uuid4().hex[:8]}", interval=5)


def build_certificate():
    return generate_certificate(f"client-{uuid.uuid4().hex[:8]}", common_name="ThermaCore test", actor=admin_of("alpha"))


def build_revocation_list():
    ca, ca_key = make_ca()
    import_certificate(f"ca-{uuid.uuid4().hex[:8]}", pem(ca), actor=admin_of("alpha"))
    return import_crl(f"crl-{uuid.uuid4().hex[:8]}", pem(make_crl(ca, ca_key, [7])), actor=admin_of("alpha"))


USER_PASSWORD = "Boiler-room-pass-4711"

BUILDERS = {
    "units.site": SiteFactory,
    "units.unit": UnitFactory,
    "sensors.sensor": SensorFactory,
    "protocols.device": DeviceFactory,
    "accounts.user": build_user,
    "alarms.alarmrule": build_alarm_rule,
    "alarms.alarm": build_alarm,
    "axes.accessattempt": build_access_attempt,
    "axes.accesslog": build_access_log,
    "axes.accessfailurelog": build_access_failure_log,
    "token_blacklist.blacklistedtoken": build_blacklisted_token,
    "audit.auditsettings": build_audit_settings,
    "otp_totp.totpdevice": build_totp_device,
    "alarms.notificationtarget": build_notification_target,
    "protocols.certificate": build_certificate,
    "protocols.pollgroup": build_poll_group,
    "protocols.certificaterevocationlist": build_revocation_list,
}

# Fields of an add form that the model does not store, such as what a certificate is generated from.
# A callable gets the template instance, whose CRL the revocation list form uploads again.
ADD_FORM_EXTRA = {
    "protocols.certificate": {"common_name": "ThermaCore test", "days": "365"},
    "protocols.certificaterevocationlist": lambda template: {
        "crl_file": SimpleUploadedFile("ca.crl", template.crl_pem.encode()),
    },
}

AUDITED = sorted(
    model._meta.label_lower for model, model_admin in admin.site._registry.items()
    if isinstance(model_admin, AuditedModelAdminMixin)
)


def model_admin_for(label):
    return next(ma for model, ma in admin.site._registry.items() if model._meta.label_lower == label)


def admin_request():
    request = RequestFactory().get("/admin/")
    request.user = admin_of("alpha")
    return request


def may_write(model_admin, request):
    return (
        model_admin.has_add_permission(request)
        or model_admin.has_change_permission(request)
        or model_admin.has_delete_permission(request)
    )


def form_data(model_admin, instance, *, add=False):
    """Return POST data of the admin's change form (or add form) showing `instance`, with empty inline formsets."""
    request = admin_request()
    if add:
        # The add form may differ from the change form (UserAdmin takes two passwords instead of a hash).
        form = model_admin.get_form(request, None, change=False)(initial=model_to_dict(instance))
    else:
        form = model_admin.get_form(request, instance)(instance=instance)
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is None:
            data[name] = ""
        elif value is True:
            data[name] = "on"
        elif value is not False:
            data[name] = value
    if add and "password1" in form.fields:
        data.update({"password1": USER_PASSWORD, "password2": USER_PASSWORD, "usable_password": "true"})
    for inline in model_admin.get_inline_instances(request, instance):
        prefix = inline.get_formset(request, instance).get_default_prefix()
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    return data


def admin_url(label, suffix):
    app_label, model_name = label.split(".")
    return f"/admin/{app_label}/{model_name}/{suffix}"


def test_writable_admins_are_audited_or_listed(alpha):
    request = admin_request()

    unlisted = []
    stale = []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        audited = isinstance(model_admin, AuditedModelAdminMixin)
        if label in NOT_YET_AUDITED and (audited or not may_write(model_admin, request)):
            stale.append(label)
        elif not audited and label not in NOT_YET_AUDITED and may_write(model_admin, request):
            unlisted.append(label)

    assert unlisted == [], "These admins let the tenant admin write without auditing; use AuditedModelAdminMixin."
    assert stale == [], "These admins are audited now or read-only; remove them from NOT_YET_AUDITED."


def test_audited_admins_include_configuration():
    assert {"units.site", "units.unit", "sensors.sensor", "protocols.device"} <= set(AUDITED)


def test_audited_admins_include_accounts_and_alarms():
    assert {"accounts.user", "alarms.alarmrule", "alarms.alarm"} <= set(AUDITED)


def assert_refused_without_entry(response, start):
    assert response.status_code == 403
    assert [entry.action for entry in entries_after(start)] == [AuditAction.PERMISSION_DENIED]


@pytest.mark.parametrize("label", AUDITED)
def test_admin_add_writes_one_entry(alpha_client, label):
    assert label in BUILDERS, f"No builder for {label}; add one to BUILDERS."
    model_admin = model_admin_for(label)
    template = BUILDERS[label]()
    extra = ADD_FORM_EXTRA.get(label, {})
    data = {**form_data(model_admin, template, add=True), **(extra(template) if callable(extra) else extra)}
    template.delete()
    may_add = model_admin.has_add_permission(admin_request())
    start = chain_head()

    response = alpha_client.post(admin_url(label, "add/"), data)

    if not may_add:
        # Read-only admins such as the alarm list: the refusal is recorded, and nothing else.
        assert_refused_without_entry(response, start)
        return
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type) == (AuditAction.OBJECT_CREATED, label)
    assert model_admin_for(label).model.objects.filter(pk=entry.object_id).exists()


@pytest.mark.parametrize("label", AUDITED)
def test_admin_change_writes_one_entry(alpha_client, label):
    assert label in BUILDERS, f"No builder for {label}; add one to BUILDERS."
    model_admin = model_admin_for(label)
    instance = BUILDERS[label]()
    data = form_data(model_admin, instance)
    may_change = model_admin.has_change_permission(admin_request(), instance)
    start = chain_head()

    response = alpha_client.post(admin_url(label, f"{instance.pk}/change/"), data)

    if not may_change:
        assert_refused_without_entry(response, start)
        return
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type, entry.object_id) == (AuditAction.OBJECT_UPDATED, label, str(instance.pk))
    assert entry.actor_name == "admin"


@pytest.mark.parametrize("label", AUDITED)
def test_admin_delete_writes_one_entry(alpha_client, label):
    model_admin = model_admin_for(label)
    instance = BUILDERS[label]()
    may_delete = model_admin.has_delete_permission(admin_request(), instance)
    start = chain_head()

    response = alpha_client.post(admin_url(label, f"{instance.pk}/delete/"), {"post": "yes"})

    if not may_delete:
        assert_refused_without_entry(response, start)
        return
    assert response.status_code == 302
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type, entry.object_id) == (AuditAction.OBJECT_DELETED, label, str(instance.pk))


@pytest.mark.parametrize("label", AUDITED)
def test_admin_bulk_delete_writes_one_entry(alpha_client, label):
    model_admin = model_admin_for(label)
    instance = BUILDERS[label]()
    may_delete = model_admin.has_delete_permission(admin_request())
    start = chain_head()

    response = alpha_client.post(
        admin_url(label, ""), {"action": "delete_selected", "_selected_action": [str(instance.pk)], "post": "yes"}
    )

    if not may_delete:
        # Without the delete permission the admin does not offer the action and changes nothing.
        assert model_admin.model.objects.filter(pk=instance.pk).exists()
        assert [entry.action for entry in entries_after(start)] in ([], [AuditAction.PERMISSION_DENIED])
        return
    assert response.status_code == 302
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type, entry.object_id) == (AuditAction.OBJECT_DELETED, label, str(instance.pk))


def build_out_of_service_rule():
    rule = build_alarm_rule()
    AlarmRule.objects.filter(pk=rule.pk).update(in_service=False)
    return rule


def build_webhook_target():
    target, _secret = create_notification_target(
        actor=admin_of("alpha"), name="Pager hook", kind="webhook", url="https://pager.example/hook"
    )
    return target


# Admin actions besides "delete selected": the object they run on, extra POST data and the entry they write.
ACTION_CASES = {
    ("alarms.alarm", "acknowledge_selected"): (build_alarm, {}, AuditAction.ALARM_ACKNOWLEDGED),
    ("alarms.alarmrule", "remove_selected_from_service"): (
        build_alarm_rule, {"apply": "yes", "comment": "Transmitter replaced"}, AuditAction.OBJECT_UPDATED,
    ),
    ("alarms.alarmrule", "return_selected_to_service"): (
        build_out_of_service_rule, {"apply": "yes", "comment": "Transmitter back"}, AuditAction.OBJECT_UPDATED,
    ),
    ("alarms.notificationtarget", "rotate_secrets"): (build_webhook_target, {}, AuditAction.OBJECT_UPDATED),
}


# Admin actions that change nothing, with the reason.
READ_ONLY_ACTIONS = {
    ("protocols.device", "download_profile"): "downloads the devices' profiles as YAML and changes nothing",
    ("protocols.device", "download_sparkplug_template"): "downloads a device's Sparkplug B template and changes nothing",
}


def custom_admin_actions():
    """Return (model label, action name) of every action declared on a registered admin, site-wide ones excluded."""
    found = set()
    for model, model_admin in admin.site._registry.items():
        for action in model_admin.actions or ():
            name = action if isinstance(action, str) else action.__name__
            found.add((model._meta.label_lower, name))
    return found


def test_admin_actions_have_cases():
    missing = sorted(custom_admin_actions() - set(ACTION_CASES) - set(READ_ONLY_ACTIONS))
    stale = sorted((set(ACTION_CASES) | set(READ_ONLY_ACTIONS)) - custom_admin_actions())

    assert missing == [], "These admin actions have no audit case; add one to ACTION_CASES."
    assert stale == [], "These admin actions are gone; remove them from ACTION_CASES."


@pytest.mark.parametrize(("label", "action"), sorted(ACTION_CASES), ids=[f"{l} {a}" for l, a in sorted(ACTION_CASES)])
def test_admin_action_writes_one_entry(alpha_client, label, action):
    build, extra, expected_action = ACTION_CASES[(label, action)]
    instance = build()
    start = chain_head()

    response = alpha_client.post(
        admin_url(label, ""), {"action": action, "_selected_action": [str(instance.pk)], **extra}
    )

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type, entry.object_id) == (expected_action, label, str(instance.pk))
    assert entry.actor_name == "admin"


def test_certificate_delete_entry_hides_key(alpha_client):
    certificate = build_certificate()
    assert certificate.private_key_encrypted
    start = chain_head()

    response = alpha_client.post(
        admin_url("protocols.certificate", ""),
        {"action": "delete_selected", "_selected_action": [str(certificate.pk)], "post": "yes"},
    )

    assert response.status_code == 302
    [entry] = entries_after(start)
    assert entry.changes["private_key_encrypted"] == ["[redacted]", None]
    assert certificate.private_key_encrypted not in str(entry.changes)


def custom_admin_url_names(site):
    """Return {url name: model label} of the pages a ModelAdmin adds in get_urls beyond Django's standard ones."""
    found = {}
    for model, model_admin in site._registry.items():
        standard = {pattern.name for pattern in admin.ModelAdmin.get_urls(model_admin)}
        for pattern in model_admin.get_urls():
            if pattern.name not in standard:
                found[pattern.name] = model._meta.label_lower
    return found


def build_profile_import():
    """Return (url, POST data) that applies a device's own exported profile to it again through the admin page."""
    point = PointFactory()
    data = {"unit": point.sensor.unit_id, "profile_text": export_profile(point.device), "apply": "yes"}
    return f"/admin/protocols/device/{point.device_id}/profile/import/", data, "protocols.device", point.device_id


def build_password_change():
    user = build_user()
    data = {"password1": "Boiler-room-new-4712", "password2": "Boiler-room-new-4712", "usable_password": "true"}
    return f"/admin/accounts/user/{user.pk}/password/", data, "accounts.user", user.pk


# Pages that admins add beside their model pages: a case that POSTs to it, or the reason it changes nothing.
CUSTOM_PAGE_CASES = {
    "protocols_device_import_profile": (build_profile_import, AuditAction.OBJECTS_IMPORTED),
    "auth_user_password_change": (build_password_change, AuditAction.OBJECT_UPDATED),
}
READ_ONLY_PAGES = {
    "protocols_device_export_profile": "downloads the device's profile and changes nothing",
    "protocols_device_export_sparkplug": "downloads the device's Sparkplug B template and changes nothing",
    "otp_totp_totpdevice_config": "shows a TOTP device's settings and changes nothing",
    "otp_totp_totpdevice_qrcode": "shows a TOTP device's QR code and changes nothing",
}


def test_custom_admin_pages_have_cases():
    pages = set(custom_admin_url_names(admin.site))

    assert sorted(pages - set(CUSTOM_PAGE_CASES) - set(READ_ONLY_PAGES)) == [], (
        "These admin pages have no audit case; add one to CUSTOM_PAGE_CASES or READ_ONLY_PAGES."
    )
    assert sorted((set(CUSTOM_PAGE_CASES) | set(READ_ONLY_PAGES)) - pages) == [], "These admin pages are gone."


@pytest.mark.parametrize("name", sorted(CUSTOM_PAGE_CASES))
def test_custom_admin_page_writes_one_entry(alpha_client, name):
    build, expected_action = CUSTOM_PAGE_CASES[name]
    url, data, object_type, object_id = build()
    start = chain_head()

    response = alpha_client.post(url, data)

    assert response.status_code == 302, response.context and response.context.get("issues")
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type, entry.object_id) == (expected_action, object_type, str(object_id))
    assert entry.actor_name == "admin"


def changed_value(value):
    if isinstance(value, bool):
        return "" if value else "on"
    if isinstance(value, int):
        return value + 1
    return f"{value} changed"


def changelist_row(form):
    """Return the POST data of one bound-to-be row of a changelist formset, with its current values."""
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is True:
            data[f"{form.prefix}-{name}"] = "on"
        elif value not in (None, False):
            data[f"{form.prefix}-{name}"] = value
    return data


LIST_EDITABLE = sorted(label for label in AUDITED if model_admin_for(label).list_editable)


def test_list_editable_admins_found():
    assert "protocols.pollgroup" in LIST_EDITABLE


@pytest.mark.parametrize("label", LIST_EDITABLE)
def test_admin_list_editable_writes_one_entry(alpha_client, label):
    model_admin = model_admin_for(label)
    instances = [BUILDERS[label](), BUILDERS[label]()]
    formset_class = model_admin.get_changelist_formset(admin_request())
    formset = formset_class(queryset=model_admin.model.objects.filter(pk__in=[i.pk for i in instances]).order_by("pk"))
    data = {"_save": "Save", f"{formset.prefix}-TOTAL_FORMS": "2", f"{formset.prefix}-INITIAL_FORMS": "2"}
    for form in formset.forms:
        data.update(changelist_row(form))
    # Only the first row changes, so only it may be recorded.
    field, first = model_admin.list_editable[0], formset.forms[0]
    data[f"{first.prefix}-{field}"] = changed_value(first[field].value())
    start = chain_head()

    response = alpha_client.post(admin_url(label, ""), data)

    assert response.status_code == 302, response.context and response.context["cl"].formset.errors
    [entry] = entries_after(start)
    assert (entry.action, entry.object_type, entry.object_id) == (
        AuditAction.OBJECT_UPDATED, label, str(first.instance.pk),
    )
    assert field in entry.changes
