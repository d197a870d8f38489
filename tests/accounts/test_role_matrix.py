"""Role matrix of the REST API, generated from the tenant URL configuration.

Every DRF endpoint and method found in the URL configuration must have an
entry in EXPECTED_ACCESS, so a new route without a decision fails
``test_every_api_route_has_matrix_entry``. Each entry is then called by a
user of every role and by an anonymous client.
"""

import pytest
from django.urls import get_resolver, reverse
from django.utils import timezone
from rest_framework.views import APIView

from apps.accounts.choices import Role
from apps.accounts.services import create_api_key as create_api_key_service
from apps.alarms.choices import AlarmState, Condition
from apps.alarms.models import Alarm, AlarmRule, AlarmTransition, NotificationDelivery
from apps.alarms.notifications import create_notification_target as create_notification_target_service
from apps.telemetry.models import CsvImportJob
from tests.accounts.routes import is_format_suffix_variant, iter_routes
from tests.conftest import admin_of
from tests.factories import DeviceFactory, PointFactory, SensorFactory, SiteFactory, UnitFactory

ADMIN_ONLY = frozenset({Role.ADMIN})
OPERATORS = frozenset({Role.ADMIN, Role.OPERATOR})
PLANT_READERS = frozenset({Role.ADMIN, Role.OPERATOR, Role.VIEWER})
AUDIT_READERS = frozenset({Role.ADMIN, Role.AUDITOR})
EVERY_ROLE = frozenset(Role)
# No login needed: token endpoints and the API description.
ANONYMOUS = "anonymous"


def plant_viewset(basename):
    """Return the entries of a plant configuration viewset: readers may list, only admins write."""
    return {
        (f"{basename}-list", "GET"): PLANT_READERS,
        (f"{basename}-list", "POST"): ADMIN_ONLY,
        (f"{basename}-detail", "GET"): PLANT_READERS,
        (f"{basename}-detail", "PUT"): ADMIN_ONLY,
        (f"{basename}-detail", "PATCH"): ADMIN_ONLY,
        (f"{basename}-detail", "DELETE"): ADMIN_ONLY,
    }


EXPECTED_ACCESS = {
    **plant_viewset("site"),
    **plant_viewset("unit"),
    **plant_viewset("sensor"),
    **plant_viewset("device"),
    **plant_viewset("point"),
    **plant_viewset("alarmrule"),
    # Auditors see the security alarms only, so a process alarm's detail is a 404 to them.
    ("alarm-list", "GET"): PLANT_READERS | AUDIT_READERS,
    ("alarm-detail", "GET"): PLANT_READERS | AUDIT_READERS,
    ("alarm-kpis", "GET"): PLANT_READERS,
    ("alarm-acknowledge", "POST"): OPERATORS,
    ("alarm-shelve", "POST"): OPERATORS,
    ("alarm-unshelve", "POST"): OPERATORS,
    ("alarmrule-remove-from-service", "POST"): ADMIN_ONLY,
    ("alarmrule-return-to-service", "POST"): ADMIN_ONLY,
    ("notificationtarget-list", "GET"): ADMIN_ONLY,
    ("notificationtarget-list", "POST"): ADMIN_ONLY,
    ("notificationtarget-detail", "GET"): ADMIN_ONLY,
    ("notificationtarget-detail", "DELETE"): ADMIN_ONLY,
    ("notificationtarget-rotate-secret", "POST"): ADMIN_ONLY,
    ("notificationdelivery-list", "GET"): ADMIN_ONLY,
    ("notificationdelivery-detail", "GET"): ADMIN_ONLY,
    ("sensor-readings", "GET"): PLANT_READERS,
    ("point-write", "POST"): OPERATORS,
    ("device-profile", "GET"): ADMIN_ONLY,
    ("device-profile", "POST"): ADMIN_ONLY,
    ("device-test", "POST"): ADMIN_ONLY,
    ("device-browse", "GET"): ADMIN_ONLY,
    ("audit-entry-list", "GET"): AUDIT_READERS,
    ("audit-export", "GET"): AUDIT_READERS,
    ("audit-export-manifest", "GET"): AUDIT_READERS,
    ("ingest", "POST"): ADMIN_ONLY,
    ("ingest_csv", "POST"): ADMIN_ONLY,
    ("ingest_csv_jobs", "GET"): ADMIN_ONLY,
    ("ingest_csv_jobs", "POST"): ADMIN_ONLY,
    ("ingest_csv_job", "GET"): ADMIN_ONLY,
    ("api-root", "GET"): EVERY_ROLE,
    ("token_obtain_pair", "POST"): ANONYMOUS,
    ("token_refresh", "POST"): ANONYMOUS,
    # Logout needs only the refresh token it revokes.
    ("auth_logout", "POST"): ANONYMOUS,
    ("auth_me", "GET"): EVERY_ROLE,
    ("auth_me", "PATCH"): EVERY_ROLE,
    ("schema", "GET"): ANONYMOUS,
    ("swagger-ui", "GET"): ANONYMOUS,
    ("apikey-list", "GET"): ADMIN_ONLY,
    ("apikey-list", "POST"): ADMIN_ONLY,
    ("apikey-detail", "GET"): ADMIN_ONLY,
    ("apikey-detail", "DELETE"): ADMIN_ONLY,
}


def create_api_key():
    return create_api_key_service(name="Historian export", role=Role.VIEWER, actor=admin_of("alpha"))[0]


def create_alarm_rule():
    return AlarmRule.objects.create(sensor=SensorFactory(), condition=Condition.HIGH, limit=100.0)


def create_alarm():
    rule = create_alarm_rule()
    now = timezone.now()
    return Alarm.objects.create(
        rule=rule, unit=rule.sensor.unit, priority=rule.priority, message="Supply too hot",
        state=AlarmState.ACTIVE_UNACKNOWLEDGED, condition_started_at=now, activated_at=now,
    )


def create_notification_target():
    return create_notification_target_service(
        actor=admin_of("alpha"), name="Pager", kind="webhook", url="http://127.0.0.1:9/hook"
    )[0]


def create_notification_delivery():
    alarm = create_alarm()
    transition = AlarmTransition.objects.create(
        alarm=alarm, time=alarm.activated_at, action="activate", to_state=alarm.state
    )
    return NotificationDelivery.objects.create(
        target=create_notification_target(), alarm=alarm, transition=transition, event="annunciated"
    )


def create_csv_import_job():
    return CsvImportJob.objects.create(requested_by=admin_of("alpha"), source="history.csv", upload_path="")


# Objects that detail routes act on, by the model of the view's queryset.
FACTORIES = {
    "alarms.notificationtarget": create_notification_target,
    "alarms.notificationdelivery": create_notification_delivery,
    "accounts.apikey": create_api_key,
    "alarms.alarmrule": create_alarm_rule,
    "alarms.alarm": create_alarm,
    "units.site": SiteFactory,
    "units.unit": UnitFactory,
    "sensors.sensor": SensorFactory,
    "protocols.device": DeviceFactory,
    "protocols.point": PointFactory,
    "telemetry.csvimportjob": create_csv_import_job,
}


def _api_routes():
    routes = {}
    for route in iter_routes(get_resolver("thermacore.urls").url_patterns):
        view_class = getattr(route.callback, "cls", None)
        if view_class is None or not issubclass(view_class, APIView) or is_format_suffix_variant(route):
            continue
        key_name = route.name or route.pattern
        for method in route.methods:
            routes[(key_name, method)] = route
    return routes


API_ROUTES = _api_routes()
CASES = sorted(API_ROUTES)


def test_every_api_route_has_matrix_entry():
    missing = sorted(set(API_ROUTES) - set(EXPECTED_ACCESS))
    stale = sorted(set(EXPECTED_ACCESS) - set(API_ROUTES))

    assert missing == [], "add these routes to EXPECTED_ACCESS with the roles that may call them"
    assert stale == [], "these EXPECTED_ACCESS entries match no route any more"


def _url_for(route_key):
    name, _ = route_key
    route = API_ROUTES[route_key]
    lookup = getattr(route.callback.cls, "lookup_url_kwarg", None) or getattr(route.callback.cls, "lookup_field", "pk")
    # Router routes are regular expressions, path() routes use converters such as <int:pk>.
    if not any(marker in route.pattern for marker in (f"(?P<{lookup}>", f":{lookup}>", f"<{lookup}>")):
        return reverse(name)
    model = route.callback.cls.queryset.model
    factory = FACTORIES.get(model._meta.label_lower)
    assert factory is not None, f"add a factory for {model._meta.label} to FACTORIES"
    return reverse(name, kwargs={lookup: getattr(factory(), lookup)})


def _call(client, method, url):
    return getattr(client, method.lower())(url, {}, format="json")


@pytest.mark.parametrize("role", [*Role, None], ids=[*Role.values, "anonymous"])
@pytest.mark.parametrize("route_key", CASES, ids=[f"{name}-{method}" for name, method in CASES])
def test_role_matrix(api_as, route_key, role):
    expected = EXPECTED_ACCESS.get(route_key)
    if expected is None:
        pytest.fail(f"{route_key} has no EXPECTED_ACCESS entry")
    client = api_as(role)
    url = _url_for(route_key)

    response = _call(client, route_key[1], url)

    if expected == ANONYMOUS:
        assert response.status_code not in (401, 403), response.content[:300]
    elif role is None:
        assert response.status_code == 401
    elif role in expected:
        assert response.status_code not in (401, 403), response.content[:300]
    else:
        assert response.status_code == 403, response.content[:300]
