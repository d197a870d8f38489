"""Every mutating endpoint of the REST API writes exactly one matching audit entry.

The endpoints come from the URL configuration, so a new POST, PUT, PATCH or
DELETE endpoint fails here until it has a case below. Endpoints whose audit
call is still missing are listed in NOT_YET_AUDITED; their case runs and
fails loudly once they do write their entry, so the list only shrinks.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiKey
from apps.accounts.services import create_api_key
from apps.alarms.models import Alarm, AlarmRule, NotificationTarget
from apps.alarms.notifications import create_notification_target
from apps.audit.choices import AuditAction, Outcome
from apps.protocols.profiles import export_profile
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS, admin_of, free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory, SiteFactory, UnitFactory

API_PREFIX = "api/v1/"
WRITE_METHODS = ("post", "put", "patch", "delete")

# Endpoints that write process data rather than configuration, and are not audited by design.
EXEMPT = {
    ("ingest", "post"): "posts readings (process data) into the ingest pipeline; audit entries per reading batch "
    "would bury configuration changes",
    ("device-test", "post"): "connects to the device and reads one point; it changes no configuration and no value",
}

# Endpoints that do not write their audit entry yet.
NOT_YET_AUDITED = {}


def iter_patterns(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from iter_patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def served_write_methods(callback):
    actions = getattr(callback, "actions", None)
    if actions:
        return [method for method in WRITE_METHODS if method in actions]
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is None:
        return []
    allowed = getattr(view_class, "http_method_names", WRITE_METHODS)
    return [method for method in WRITE_METHODS if method in allowed and hasattr(view_class, method)]


def mutating_api_endpoints():
    """Return (url name, method, view callback) for every write endpoint under /api/v1/."""
    endpoints = {}
    for route, pattern in iter_patterns(get_resolver("thermacore.urls").url_patterns):
        if not route.startswith(API_PREFIX) or "(?P<format>" in route or "drf_format_suffix" in route:
            continue
        for method in served_write_methods(pattern.callback):
            if (pattern.name, method) not in EXEMPT:
                endpoints[(pattern.name, method)] = pattern.callback
    return endpoints


@dataclass
class Expected:
    """The request a case sends and the audit entry it must produce."""

    method: str
    url: str
    data: dict
    status: int
    action: str
    object_type: str
    object_id: Callable | str
    outcome: str = Outcome.SUCCESS
    format: str = "json"


def make_alarm_rule():
    return AlarmRule.objects.create(sensor=SensorFactory(minimum=0, maximum=200), condition="hi", limit=100.0,
                                    priority="high")


def make_alarm(state, **fields):
    rule = make_alarm_rule()
    now = timezone.now()
    return Alarm.objects.create(
        rule=rule, unit=rule.sensor.unit, priority="high", message="Supply temperature high", state=state,
        condition_started_at=now, activated_at=now, **fields,
    )


# Builders of one stored object per router basename; they must give valid, unique objects.
MODEL_BUILDERS = {
    "site": SiteFactory,
    "unit": UnitFactory,
    "sensor": SensorFactory,
    "device": DeviceFactory,
    "point": PointFactory,
    "alarmrule": make_alarm_rule,
}


def writable_data(callback, instance):
    serializer_class = callback.cls.serializer_class
    data = dict(serializer_class(instance).data)
    read_only = set(getattr(serializer_class.Meta, "read_only_fields", ())) | {"id"}
    return {name: value for name, value in data.items() if name not in read_only and value is not None}


def model_case(basename, method, callback):
    instance = MODEL_BUILDERS[basename]()
    object_type = f"{instance._meta.app_label}.{instance._meta.model_name}"
    data = writable_data(callback, instance)
    if method == "post":
        # The stored copy goes, so the posted data does not clash with its unique fields.
        instance.delete()
        return Expected("post", reverse(f"{basename}-list"), data, 201, AuditAction.OBJECT_CREATED, object_type,
                        lambda response: str(response.data["id"]))
    url = reverse(f"{basename}-detail", kwargs={"pk": instance.pk})
    if method == "put":
        return Expected("put", url, data, 200, AuditAction.OBJECT_UPDATED, object_type, str(instance.pk))
    if method == "patch":
        return Expected("patch", url, {}, 200, AuditAction.OBJECT_UPDATED, object_type, str(instance.pk))
    return Expected("delete", url, {}, 204, AuditAction.OBJECT_DELETED, object_type, str(instance.pk))


def setpoint_case():
    # Nothing listens on the device's port, so the write fails fast and is audited as a failure.
    device = DeviceFactory(port=free_port(), timeout=0.5)
    point = PointFactory(device=device, register_type="holding", data_type="float32")
    return Expected("post", f"/{API_PREFIX}points/{point.pk}/write/", {"value": 50.0}, 502,
                    AuditAction.SETPOINT_WRITTEN, "protocols.point", str(point.pk), Outcome.FAILURE)


def device_profile_case():
    # The device's own exported profile is a valid import; applying it again updates its points.
    point = PointFactory()
    return Expected("post", reverse("device-profile", kwargs={"pk": point.device_id}),
                    {"profile": export_profile(point.device), "unit": point.sensor.unit_id}, 200,
                    AuditAction.OBJECTS_IMPORTED, "protocols.device", str(point.device_id))


def api_key_create_case():
    return Expected("post", reverse("apikey-list"), {"name": "Historian export", "role": "viewer"}, 201,
                    AuditAction.API_KEY_CREATED, "accounts.user",
                    lambda response: str(ApiKey.objects.get(prefix=response.data["prefix"]).user_id))


def api_key_revoke_case():
    api_key, _key = create_api_key(name="Old export", role="viewer", actor=admin_of("alpha"))
    return Expected("delete", reverse("apikey-detail", kwargs={"prefix": api_key.prefix}), {}, 204,
                    AuditAction.API_KEY_REVOKED, "accounts.user", str(api_key.user_id))


def token_obtain_case():
    return Expected("post", f"/{API_PREFIX}auth/token/", {"username": "admin", "password": ADMIN_PASSWORD}, 200,
                    AuditAction.TOKEN_ISSUED, "accounts.user", str(admin_of("alpha").pk))


def fresh_refresh_token():
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    return client.post(f"/{API_PREFIX}auth/token/", {"username": "admin", "password": ADMIN_PASSWORD},
                       format="json").data["refresh"]


def token_refresh_case():
    return Expected("post", f"/{API_PREFIX}auth/token/refresh/", {"refresh": fresh_refresh_token()}, 200,
                    AuditAction.TOKEN_REFRESHED, "", "")


def logout_case():
    return Expected("post", f"/{API_PREFIX}auth/logout/", {"refresh": fresh_refresh_token()}, 200,
                    AuditAction.TOKEN_REVOKED, "", "")


def profile_case():
    return Expected("patch", f"/{API_PREFIX}auth/me/", {"first_name": "Ada"}, 200, AuditAction.OBJECT_UPDATED,
                    "accounts.user", str(admin_of("alpha").pk))


def alarm_action_case(name):
    if name == "acknowledge":
        alarm = make_alarm("active_unack")
        data, action = {"comment": "seen"}, AuditAction.ALARM_ACKNOWLEDGED
    elif name == "shelve":
        alarm = make_alarm("active_unack")
        data, action = {"comment": "sensor under maintenance", "minutes": 30}, AuditAction.ALARM_SHELVED
    else:
        alarm = make_alarm("shelved", shelved_until=timezone.now() + timedelta(hours=1), shelve_reason="test")
        data, action = {"comment": "back"}, AuditAction.ALARM_UNSHELVED
    return Expected("post", f"/{API_PREFIX}alarms/{alarm.pk}/{name}/", data, 200, action, "alarms.alarm",
                    str(alarm.pk))


def rule_service_case(name):
    if name == "remove-from-service":
        rule, data = make_alarm_rule(), {"comment": "transmitter replaced"}
    else:
        rule = make_alarm_rule()
        AlarmRule.objects.filter(pk=rule.pk).update(in_service=False)
        data = {"comment": "transmitter back"}
    return Expected("post", f"/{API_PREFIX}alarm-rules/{rule.pk}/{name}/", data, 200, AuditAction.OBJECT_UPDATED,
                    "alarms.alarmrule", str(rule.pk))


def notification_target_create_case():
    return Expected("post", reverse("notificationtarget-list"),
                    {"name": "On-call mail", "kind": "email", "email": "oncall@alpha.example"}, 201,
                    AuditAction.OBJECT_CREATED, "alarms.notificationtarget", lambda response: str(response.data["id"]))


def notification_target_delete_case():
    target = NotificationTarget.objects.create(name="Old pager", kind="email", email="pager@alpha.example")
    return Expected("delete", reverse("notificationtarget-detail", kwargs={"pk": target.pk}), {}, 204,
                    AuditAction.OBJECT_DELETED, "alarms.notificationtarget", str(target.pk))


def notification_secret_case():
    target, _secret = create_notification_target(
        actor=admin_of("alpha"), name="Pager hook", kind="webhook", url="https://pager.example/hook"
    )
    return Expected("post", reverse("notificationtarget-rotate-secret", kwargs={"pk": target.pk}), {}, 200,
                    AuditAction.OBJECT_UPDATED, "alarms.notificationtarget", str(target.pk))


def csv_import_case():
    sensor = SensorFactory(minimum=0, maximum=200)
    upload = SimpleUploadedFile("readings.csv", f"time,sensor,value\n2026-01-05T10:00:00Z,{sensor.pk},21.5\n".encode())
    return Expected("post", f"/{API_PREFIX}ingest/csv/", {"file": upload}, 200, AuditAction.OBJECTS_IMPORTED,
                    "telemetry.reading", "", format="multipart")


def csv_import_job_case():
    sensor = SensorFactory(minimum=0, maximum=200)
    upload = SimpleUploadedFile("history.csv", f"time,sensor,value\n2026-01-05T10:00:00Z,{sensor.pk},21.5\n".encode())
    return Expected("post", f"/{API_PREFIX}ingest/csv/jobs/", {"file": upload}, 202, AuditAction.OBJECT_CREATED,
                    "telemetry.csvimportjob", lambda response: str(response.data["id"]), format="multipart")


def case_for(name, method, callback):
    """Arrange the data for one endpoint and return its Expected request and entry, or None when unknown."""
    basename, _, route_kind = name.rpartition("-")
    if basename in MODEL_BUILDERS and route_kind in ("list", "detail"):
        return model_case(basename, method, callback)
    special = {
        ("point-write", "post"): setpoint_case,
        ("device-profile", "post"): device_profile_case,
        ("ingest_csv", "post"): csv_import_case,
        ("ingest_csv_jobs", "post"): csv_import_job_case,
        ("apikey-list", "post"): api_key_create_case,
        ("apikey-detail", "delete"): api_key_revoke_case,
        ("token_obtain_pair", "post"): token_obtain_case,
        ("token_refresh", "post"): token_refresh_case,
        ("auth_logout", "post"): logout_case,
        ("auth_me", "patch"): profile_case,
        ("alarm-acknowledge", "post"): lambda: alarm_action_case("acknowledge"),
        ("alarm-shelve", "post"): lambda: alarm_action_case("shelve"),
        ("alarm-unshelve", "post"): lambda: alarm_action_case("unshelve"),
        ("alarmrule-remove-from-service", "post"): lambda: rule_service_case("remove-from-service"),
        ("alarmrule-return-to-service", "post"): lambda: rule_service_case("return-to-service"),
        ("notificationtarget-list", "post"): notification_target_create_case,
        ("notificationtarget-detail", "delete"): notification_target_delete_case,
        ("notificationtarget-rotate-secret", "post"): notification_secret_case,
    }.get((name, method))
    return special() if special else None


ENDPOINTS = mutating_api_endpoints()


def test_url_configuration_has_mutating_endpoints():
    assert ("site-list", "post") in ENDPOINTS
    assert ("point-detail", "delete") in ENDPOINTS


def test_exempt_endpoints_still_exist():
    names = {pattern.name for _route, pattern in iter_patterns(get_resolver("thermacore.urls").url_patterns)}

    assert {name for name, _method in EXEMPT} <= names


@pytest.mark.parametrize(("name", "method"), sorted(ENDPOINTS), ids=[f"{m.upper()} {n}" for n, m in sorted(ENDPOINTS)])
def test_mutating_endpoint_writes_one_matching_entry(alpha_api, name, method, settings, tmp_path):
    # Uploads of the CSV import jobs endpoint land in the test's own folder.
    settings.TELEMETRY_CSV_IMPORT_DIR = tmp_path
    expected = case_for(name, method, ENDPOINTS[(name, method)])
    assert expected is not None, f"No audit case for {method.upper()} {name}; add one to tests/audit/test_api_coverage.py."
    start = chain_head()

    response = getattr(alpha_api, expected.method)(expected.url, expected.data, format=expected.format)

    assert response.status_code == expected.status, response.content
    entries = entries_after(start)
    if (name, method) in NOT_YET_AUDITED:
        assert entries == [], f"{method.upper()} {name} now writes audit entries; remove it from NOT_YET_AUDITED."
        pytest.xfail(NOT_YET_AUDITED[(name, method)])
    assert len(entries) == 1, [str(entry) for entry in entries]
    [entry] = entries
    object_id = expected.object_id(response) if callable(expected.object_id) else expected.object_id
    assert entry.action == expected.action
    assert entry.outcome == expected.outcome
    assert (entry.object_type, entry.object_id) == (expected.object_type, object_id)
    assert (entry.actor_name, entry.actor_id) == ("admin", str(admin_of("alpha").pk))
