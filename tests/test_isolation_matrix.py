"""Isolation matrix: credentials of tenant alpha used on tenant beta's domain, for every route.

The HTTP cases are generated from the tenant URL configuration and the
WebSocket cases from the ASGI application, so a new route is covered as
soon as it exists. Each route is called on beta's host with alpha's session
cookie, with alpha's bearer token and with an API key of alpha. A private
route must return 401, 403, 404 or 405, or redirect to a login page. A
route in PUBLIC_ROUTES (login, password reset, API description) may return
a page, but never one with beta's data. Alpha's admin and beta's admin have
the same user id, so a token or session that crossed tenants would log in
as beta's admin.

A route parameter without a sample value in ROUTE_PARAMETERS fails the
suite, and so does a public route that is not listed.
"""

import re
from importlib import import_module

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client
from django.urls import get_resolver
from django.utils import timezone
from django_tenants.utils import schema_context
from rest_framework.test import APIClient
from rest_framework.views import APIView

from apps.accounts.choices import Role
from apps.accounts.services import create_api_key
from apps.alarms.choices import AlarmState, Condition
from apps.alarms.models import Alarm, AlarmRule
from apps.units.models import Unit
from tests.accounts.routes import is_format_suffix_variant, iter_routes
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of
from tests.factories import DeviceFactory, PointFactory, SensorFactory, SiteFactory, UnitFactory
from thermacore.asgi import application

MARKER = "BETA-SECRET"
BETA_HOST = TENANT_DOMAINS["beta"]

# Routes served without a login. Every other route must reject alpha's credentials.
PUBLIC_ROUTES = {
    "login",
    "logout",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
    "admin:login",
    "admin:logout",
    "token_obtain_pair",
    "token_refresh",
    "auth_logout",
    "schema",
    "swagger-ui",
}

# Sample values of route parameters: None takes the id of beta's object of
# the route's model, a callable is called with beta's objects.
ROUTE_PARAMETERS = {
    "prefix": lambda beta_objects: beta_objects["api_key_prefix"],
    "pk": None,
    "object_id": None,
    "id": None,
    "device_id": lambda beta_objects: beta_objects["protocols.device"],
    "content_type_id": lambda beta_objects: ContentType.objects.get_for_model(Unit).pk,
    "app_label": "units",
    "url": "units/unit/",
    "uidb64": "MQ",
    "token": "set-password",
}

LOGIN_PATHS = ("/accounts/login/", "/admin/login/")


def _http_routes():
    cases = []
    for route in iter_routes(get_resolver("thermacore.urls").url_patterns):
        if is_format_suffix_variant(route):
            continue
        view_class = getattr(route.callback, "cls", None)
        is_api = view_class is not None and issubclass(view_class, APIView)
        methods = set(route.methods) | {"GET"} if is_api else {"GET", "POST"}
        for method in sorted(methods):
            cases.append((route, method))
    return cases


HTTP_CASES = _http_routes()


def _case_id(case):
    route, method = case
    return f"{method} {route.name or route.pattern}"


def _route_parameters(route):
    return re.findall(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>", route.pattern)


def _route_model(route):
    view_class = getattr(route.callback, "cls", None)
    queryset = getattr(view_class, "queryset", None)
    if queryset is not None:
        return queryset.model
    admin_page = re.match(r"admin/(\w+)/(\w+)/", route.pattern)
    if admin_page:
        return apps.get_model(admin_page.group(1), admin_page.group(2))
    if route.name.startswith("alarms:"):
        return Alarm
    return Unit


def _url(route, beta_objects):
    url = route.pattern
    for converter_name, group_name in _route_parameters(route):
        name = converter_name or group_name
        assert name in ROUTE_PARAMETERS, f"add a sample value for route parameter {name!r} to ROUTE_PARAMETERS"
        value = ROUTE_PARAMETERS[name]
        if value is None:
            value = beta_objects.get(_route_model(route)._meta.label_lower, beta_objects["units.unit"])
        elif callable(value):
            value = value(beta_objects)
        url = re.sub(rf"<(?:\w+:)?{name}>|\(\?P<{name}>[^)]*\)", str(value), url, count=1)
    return "/" + url.replace("^", "").replace("$", "").replace("\\", "")


@pytest.fixture
def beta_objects(beta):
    """Objects of beta whose names carry MARKER, by model label; the connection is back on public after."""
    connection.set_tenant(beta)
    site = SiteFactory(name=f"{MARKER} site")
    unit = UnitFactory(site=site, name=f"{MARKER} unit")
    sensor = SensorFactory(unit=unit, name=f"{MARKER} sensor")
    device = DeviceFactory(name=f"{MARKER} device")
    point = PointFactory(device=device, sensor=sensor)
    rule = AlarmRule.objects.create(sensor=sensor, condition=Condition.HIGH, limit=100.0, message=f"{MARKER} rule")
    now = timezone.now()
    alarm = Alarm.objects.create(
        rule=rule, unit=unit, priority=rule.priority, message=f"{MARKER} alarm",
        state=AlarmState.ACTIVE_UNACKNOWLEDGED, condition_started_at=now, activated_at=now,
    )
    connection.set_schema_to_public()
    beta_admin = admin_of("beta")
    connection.set_tenant(beta)
    api_key, _ = create_api_key(name=f"{MARKER} key", role=Role.ADMIN, actor=beta_admin)
    connection.set_schema_to_public()
    objects = {obj._meta.label_lower: obj.pk for obj in (site, unit, sensor, device, point, rule, alarm, beta_admin)}
    return {**objects, "api_key_prefix": api_key.prefix}


@pytest.fixture
def alpha_session_on_beta(alpha):
    """Browser client on beta's host that carries a valid session cookie of alpha's admin."""
    client = Client(HTTP_HOST=BETA_HOST)
    client.force_login(admin_of("alpha"))
    connection.set_schema_to_public()
    return client


@pytest.fixture
def alpha_token_on_beta(alpha):
    """API client on beta's host with a valid bearer token of alpha's admin."""
    client = APIClient(HTTP_HOST=BETA_HOST)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")
    connection.set_schema_to_public()
    return client


@pytest.fixture
def alpha_api_key_on_beta(alpha):
    """API client on beta's host with a valid Admin API key of alpha."""
    _, key = create_api_key(name="Alpha automation", role=Role.ADMIN, actor=admin_of("alpha"))
    client = APIClient(HTTP_HOST=BETA_HOST)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    connection.set_schema_to_public()
    return client


def test_alpha_and_beta_admins_share_user_id(db):
    assert admin_of("alpha").pk == admin_of("beta").pk


def test_alpha_credentials_work_on_alpha(alpha):
    session = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    session.force_login(admin_of("alpha"))
    token = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    token.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")

    assert session.get("/").status_code == 200
    assert session.get("/admin/units/unit/").status_code == 200
    assert token.get("/api/v1/units/").status_code == 200


def _assert_isolated(route, response):
    assert MARKER not in response.content.decode(errors="replace"), "beta's data leaked to alpha's credentials"
    assert response.status_code < 500
    if route.name in PUBLIC_ROUTES:
        return
    if response.status_code == 302:
        assert response["Location"].startswith(LOGIN_PATHS), response["Location"]
        return
    assert response.status_code in (401, 403, 404, 405), (
        f"{response.status_code}: a route that answers without login belongs in PUBLIC_ROUTES"
    )


@pytest.mark.parametrize("case", HTTP_CASES, ids=[_case_id(case) for case in HTTP_CASES])
def test_alpha_session_on_beta_is_refused(alpha_session_on_beta, beta_objects, case):
    route, method = case
    url = _url(route, beta_objects)

    response = getattr(alpha_session_on_beta, method.lower())(url)

    _assert_isolated(route, response)


@pytest.mark.parametrize("case", HTTP_CASES, ids=[_case_id(case) for case in HTTP_CASES])
def test_alpha_token_on_beta_is_refused(alpha_token_on_beta, beta_objects, case):
    route, method = case
    url = _url(route, beta_objects)

    response = getattr(alpha_token_on_beta, method.lower())(url, {}, format="json")

    _assert_isolated(route, response)


@pytest.mark.parametrize("case", HTTP_CASES, ids=[_case_id(case) for case in HTTP_CASES])
def test_alpha_api_key_on_beta_is_refused(alpha_api_key_on_beta, beta_objects, case):
    route, method = case
    url = _url(route, beta_objects)

    response = getattr(alpha_api_key_on_beta, method.lower())(url, {}, format="json")

    _assert_isolated(route, response)


def test_every_public_route_exists():
    names = {route.name for route, _ in HTTP_CASES}

    assert PUBLIC_ROUTES - names == set()


# WebSocket --------------------------------------------------------------------


def _websocket_paths():
    router = application.application_mapping["websocket"]
    while not isinstance(router, URLRouter):
        router = router.inner
    return ["/" + str(route.pattern) for route in router.routes]


WEBSOCKET_PATHS = _websocket_paths()


@pytest.fixture
def alpha_websocket_credentials(django_db_setup, django_db_blocker):
    """A committed session key and an access token of alpha's admin; the session is deleted afterwards."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        admin = admin_of("alpha")
        session = import_module(settings.SESSION_ENGINE).SessionStore()
        session[SESSION_KEY] = str(admin.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
        session[HASH_SESSION_KEY] = admin.get_session_auth_hash()
        session.create()
        token = access_token_for("alpha", admin)
    yield {"session": session.session_key, "token": token}
    with django_db_blocker.unblock(), schema_context("alpha"):
        session.delete()


def _socket(path, host, *, token=None, session=None):
    headers = [(b"host", host.encode())]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if session:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
        headers.append((b"origin", f"http://{host}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def _outcome(communicator):
    """Connect and classify the server's reaction.

    Returns ("refused", code) when the handshake fails, ("closed", code) when
    the server closes right after accepting, ("open", None) when the socket
    stays open and ("data", message) when the server sends something.
    """
    connected, code = await communicator.connect(timeout=SOCKET_TIMEOUT)
    if not connected:
        return "refused", code
    if await communicator.receive_nothing(timeout=0.3):
        await communicator.disconnect()
        return "open", None
    message = await communicator.receive_output()
    if message["type"] == "websocket.close":
        return "closed", message.get("code")
    await communicator.disconnect()
    return "data", message


# Close codes for "not authenticated", "forbidden" and "no such endpoint".
REFUSAL_CODES = {4401, 4403, 4404}


@pytest.mark.asyncio
@pytest.mark.parametrize("credential", ["token", "session"])
async def test_alpha_websocket_opens_on_alpha(alpha_websocket_credentials, django_db_blocker, credential):
    value = alpha_websocket_credentials[credential]
    with django_db_blocker.unblock():
        outcome = await _outcome(_socket("/ws/live/", TENANT_DOMAINS["alpha"], **{credential: value}))

    assert outcome == ("open", None)


@pytest.mark.asyncio
@pytest.mark.parametrize("credential", ["token", "session"])
@pytest.mark.parametrize("path", WEBSOCKET_PATHS)
async def test_alpha_websocket_refused_on_beta(alpha_websocket_credentials, django_db_blocker, path, credential):
    value = alpha_websocket_credentials[credential]
    with django_db_blocker.unblock():
        state, detail = await _outcome(_socket(path, BETA_HOST, **{credential: value}))

    assert state in ("refused", "closed"), detail
    assert detail in REFUSAL_CODES


def test_websocket_paths_found():
    assert "/ws/live/" in WEBSOCKET_PATHS
