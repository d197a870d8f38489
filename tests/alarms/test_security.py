"""Security alarms from the audit trail's monitoring, as alarms of the alarm system without rule or unit."""

from datetime import UTC, datetime, time, timedelta
from unittest import mock

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.alarms.choices import AlarmSource, AlarmState, TransitionAction
from apps.alarms.kpis import compute_kpis
from apps.alarms.models import Alarm, NotificationDelivery, NotificationTarget
from apps.alarms.timers import run_alarm_timers
from apps.audit.choices import ActorType, AuditAction
from apps.audit.models import AuditEntry, AuditSettings
from apps.audit.services import Actor, record
from tests.accounts.conftest import create_user
from tests.conftest import TENANT_DOMAINS, access_token_for

LIMIT = 3
WINDOW = timedelta(minutes=5)
KEY = "failed_login_burst:username=admin"


@pytest.fixture
def monitoring(alpha):
    """Alpha's settings with a small limit: 3 failed logins in 5 minutes."""
    return AuditSettings.objects.create(failed_login_limit=LIMIT, failed_login_window_minutes=5)


def fail_login(username, address):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR=address)
    response = client.post("/accounts/login/", {"username": username, "password": "wrong-guess"})
    assert response.status_code == 200


def record_failed_login(username, at=None):
    """Record a failed login of `username` without a source address, at `at` (default now)."""
    actor = Actor(ActorType.ANONYMOUS, "", username)
    if at is None:
        return record(AuditAction.LOGIN_FAILED, actor=actor, detail={"username": username})
    with mock.patch("apps.audit.services.timezone.now", return_value=at):
        return record(AuditAction.LOGIN_FAILED, actor=actor, detail={"username": username})


def burst(username="admin", at=None):
    for _ in range(LIMIT):
        record_failed_login(username, at)


def security_alarms():
    return list(Alarm.objects.security().order_by("pk"))


def api_client(user):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', user)}")
    return client


def test_burst_raises_one_alarm(monitoring):
    for attempt in range(LIMIT - 1):
        fail_login("admin", f"192.0.2.{attempt + 1}")
    assert security_alarms() == []

    fail_login("admin", "192.0.2.50")

    [alarm] = security_alarms()
    assert alarm.source == AlarmSource.SECURITY
    assert alarm.key == KEY
    assert alarm.rule_id is None
    assert alarm.unit_id is None
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.priority == "high"
    assert alarm.message == "3 failed logins in 5 minutes for username admin."
    [entry] = AuditEntry.objects.filter(action=AuditAction.SECURITY_ALARM)
    assert alarm.clears_at == entry.time + WINDOW
    [transition] = alarm.transitions.all()
    assert (transition.action, transition.to_state) == (TransitionAction.ACTIVATE, AlarmState.ACTIVE_UNACKNOWLEDGED)
    assert transition.comment.startswith(f"Audit entry {entry.sequence}:")


def test_continuing_burst_extends_alarm(monitoring):
    burst()
    [alarm] = security_alarms()
    first_clears_at = alarm.clears_at

    later = record_failed_login("admin", timezone.now() + timedelta(minutes=1))

    [alarm] = security_alarms()
    assert alarm.clears_at == later.time + WINDOW
    assert alarm.clears_at > first_clears_at
    assert alarm.transitions.count() == 1
    assert AuditEntry.objects.filter(action=AuditAction.SECURITY_ALARM).count() == 1


def test_admin_acknowledges_through_api(monitoring, alpha_api):
    burst()
    [alarm] = security_alarms()

    listed = alpha_api.get("/api/v1/alarms/", {"source": "security"})
    acknowledged = alpha_api.post(f"/api/v1/alarms/{alarm.pk}/acknowledge/", {"comment": "Password spray, IP blocked"},
                                  format="json")

    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert (row["id"], row["source"], row["key"]) == (alarm.pk, "security", KEY)
    assert (row["rule"], row["unit"], row["sensor"]) == (None, None, None)
    assert acknowledged.status_code == 200, acknowledged.content
    assert acknowledged.json()["state"] == AlarmState.ACTIVE_ACKNOWLEDGED
    last = alarm.transitions.order_by("-id").first()
    assert (last.action, last.comment) == (TransitionAction.ACKNOWLEDGE, "Password spray, IP blocked")
    assert AuditEntry.objects.filter(action=AuditAction.ALARM_ACKNOWLEDGED, object_id=str(alarm.pk)).exists()


def test_detail_shows_transitions(monitoring, alpha_api):
    burst()
    [alarm] = security_alarms()

    response = alpha_api.get(f"/api/v1/alarms/{alarm.pk}/")

    assert response.status_code == 200
    assert [step["action"] for step in response.json()["transitions"]] == ["activate"]


def test_acknowledged_alarm_closes_after_window(monitoring, alpha_api):
    burst()
    [alarm] = security_alarms()
    alpha_api.post(f"/api/v1/alarms/{alarm.pk}/acknowledge/", {}, format="json")

    assert run_alarm_timers(alarm.clears_at - timedelta(seconds=1))["security_returned"] == 0
    counts = run_alarm_timers(alarm.clears_at + timedelta(seconds=1))

    alarm.refresh_from_db()
    assert counts["security_returned"] == 1
    assert alarm.state == AlarmState.NORMAL
    assert alarm.condition_active is False
    assert alarm.returned_at == alarm.clears_at
    assert alarm.closed_at is not None


def test_unacknowledged_alarm_returns_and_waits(monitoring):
    burst()
    [alarm] = security_alarms()

    run_alarm_timers(alarm.clears_at + timedelta(seconds=1))

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.transitions.order_by("-id").first().action == TransitionAction.RETURN


def test_second_burst_later_raises_new_alarm(monitoring, alpha_api):
    earlier = timezone.now() - timedelta(minutes=20)
    burst(at=earlier)
    [first] = security_alarms()
    run_alarm_timers()
    alpha_api.post(f"/api/v1/alarms/{first.pk}/acknowledge/", {}, format="json")
    first.refresh_from_db()
    assert first.state == AlarmState.NORMAL

    burst()

    alarms = security_alarms()
    assert [alarm.pk for alarm in alarms][0] == first.pk
    assert len(alarms) == 2
    assert alarms[1].state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarms[1].key == first.key


def test_repeat_while_returned_reactivates(monitoring):
    burst(at=timezone.now() - timedelta(minutes=20))
    run_alarm_timers()
    [alarm] = security_alarms()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED

    burst()

    [again] = security_alarms()
    assert again.pk == alarm.pk
    assert again.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert again.condition_active is True
    actions = list(again.transitions.order_by("id").values_list("action", flat=True))
    assert actions == [TransitionAction.ACTIVATE, TransitionAction.RETURN, TransitionAction.ACTIVATE]


def test_repeat_while_acknowledged_updates(monitoring, alpha_api):
    burst(at=timezone.now() - timedelta(minutes=6))
    [alarm] = security_alarms()
    alpha_api.post(f"/api/v1/alarms/{alarm.pk}/acknowledge/", {}, format="json")

    burst()

    [again] = security_alarms()
    assert again.pk == alarm.pk
    assert again.state == AlarmState.ACTIVE_ACKNOWLEDGED
    assert again.transitions.order_by("-id").first().action == TransitionAction.RETRIGGER
    assert again.clears_at > alarm.clears_at


def test_other_username_gets_own_alarm(monitoring):
    burst("admin")
    burst("anna")

    assert sorted(alarm.key for alarm in security_alarms()) == [KEY, "failed_login_burst:username=anna"]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_plant_roles_do_not_see_it(monitoring, role):
    burst()
    [alarm] = security_alarms()
    client = api_client(create_user(role))

    listed = client.get("/api/v1/alarms/")
    detail = client.get(f"/api/v1/alarms/{alarm.pk}/")
    acknowledge = client.post(f"/api/v1/alarms/{alarm.pk}/acknowledge/", {}, format="json")

    assert listed.status_code == 200
    assert listed.json()["results"] == []
    assert detail.status_code == 404
    assert acknowledge.status_code in (403, 404)
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_auditor_reads_but_cannot_acknowledge(monitoring):
    burst()
    [alarm] = security_alarms()
    client = api_client(create_user(Role.AUDITOR))

    listed = client.get("/api/v1/alarms/")
    acknowledge = client.post(f"/api/v1/alarms/{alarm.pk}/acknowledge/", {}, format="json")
    kpis = client.get("/api/v1/alarms/kpis/")

    assert [row["id"] for row in listed.json()["results"]] == [alarm.pk]
    assert acknowledge.status_code == 403
    assert kpis.status_code == 403


def test_viewer_page_and_banner_hide_it(monitoring):
    burst()
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(create_user(Role.VIEWER))

    page = client.get("/alarms/")
    banner = client.get("/alarms/banner/")

    assert page.status_code == 200
    assert "failed logins" not in page.text
    assert "No unacknowledged alarms" in banner.text


def test_admin_page_and_banner_show_it(monitoring, alpha_client):
    burst()
    [alarm] = security_alarms()

    page = alpha_client.get("/alarms/")
    banner = alpha_client.get("/alarms/banner/")

    assert page.status_code == 200
    assert "3 failed logins in 5 minutes for username admin." in page.text
    assert f'id="alarm-{alarm.pk}"' in page.text
    assert f"/alarms/{alarm.pk}/acknowledge/" in page.text
    assert page.context["kpis"].annunciated == 0
    assert "1 unacknowledged alarm" in banner.text


def test_auditor_page_without_actions(monitoring):
    burst()
    [alarm] = security_alarms()
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(create_user(Role.AUDITOR))

    page = client.get("/alarms/?view=history")
    acknowledge = client.post(f"/alarms/{alarm.pk}/acknowledge/")

    assert page.status_code == 200
    assert f'id="alarm-{alarm.pk}"' in page.text
    assert f"/alarms/{alarm.pk}/acknowledge/" not in page.text
    assert acknowledge.status_code == 403


def test_admin_page_acknowledges(monitoring, alpha_client):
    burst()
    [alarm] = security_alarms()

    response = alpha_client.post(f"/alarms/{alarm.pk}/acknowledge/", {"comment": "Known pen test"},
                                 HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.ACTIVE_ACKNOWLEDGED
    assert "Security" in response.text


def test_admin_shelves_and_unshelves(monitoring, alpha_api):
    burst()
    [alarm] = security_alarms()

    shelved = alpha_api.post(f"/api/v1/alarms/{alarm.pk}/shelve/", {"comment": "Pen test today", "minutes": 60},
                             format="json")
    unshelved = alpha_api.post(f"/api/v1/alarms/{alarm.pk}/unshelve/", {}, format="json")

    assert shelved.status_code == 200, shelved.content
    assert shelved.json()["state"] == AlarmState.SHELVED
    assert unshelved.json()["state"] == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_notification_target_receives_it(monitoring, django_capture_on_commit_callbacks, eager_tasks):
    target = NotificationTarget.objects.create(name="SOC", kind="email", email="soc@alpha.example",
                                               min_priority="high")

    with django_capture_on_commit_callbacks(execute=True):
        burst()

    [alarm] = security_alarms()
    [delivery] = NotificationDelivery.objects.filter(alarm=alarm)
    assert delivery.target_id == target.pk
    assert delivery.status == "delivered"
    [message] = mail.outbox
    assert message.to == ["soc@alpha.example"]
    assert message.subject == "[High] Security alarm active: 3 failed logins in 5 minutes for username admin."


def test_admins_mailed_without_target(monitoring, django_capture_on_commit_callbacks):
    admin = create_user(Role.ADMIN, username="second-admin", email="sec@alpha.example")

    with django_capture_on_commit_callbacks(execute=True):
        burst()

    [message] = mail.outbox
    assert admin.email in message.to
    assert "Burst of failed logins" in message.subject


def test_off_hours_setpoint_returns_at_once(alpha):
    AuditSettings.objects.create(working_days=[], working_hours_start=time(6, 0), working_hours_end=time(18, 0))
    user = create_user(Role.OPERATOR)

    record(AuditAction.SETPOINT_WRITTEN, actor=user, detail={"requested": 55.0})
    run_alarm_timers()

    [alarm] = security_alarms()
    assert alarm.key == f"off_hours_setpoint:user={user.pk}"
    assert alarm.priority == "medium"
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED


def test_kpis_ignore_security_alarms(monitoring, alpha_api):
    burst()
    now = timezone.now()

    kpis = compute_kpis(now - timedelta(hours=1), now + timedelta(minutes=1))
    response = alpha_api.get("/api/v1/alarms/kpis/")

    assert kpis.annunciated == 0
    assert kpis.bad_actors == []
    assert response.status_code == 200
    assert response.json()["annunciated"] == 0


def test_admin_changelist_renders(monitoring, alpha_client):
    burst()
    [alarm] = security_alarms()

    listing = alpha_client.get("/admin/alarms/alarm/")
    detail = alpha_client.get(f"/admin/alarms/alarm/{alarm.pk}/change/")

    assert listing.status_code == 200
    assert "3 failed logins" in listing.text
    assert detail.status_code == 200


def test_key_unique_while_open(monitoring):
    from django.db import IntegrityError, transaction

    burst()
    now = datetime.now(UTC)

    with pytest.raises(IntegrityError), transaction.atomic():
        Alarm.objects.create(source=AlarmSource.SECURITY, key=KEY, priority="high", message="duplicate",
                             state=AlarmState.ACTIVE_UNACKNOWLEDGED, condition_started_at=now, activated_at=now)


def test_process_alarm_needs_rule(alpha):
    from django.db import IntegrityError, transaction

    now = datetime.now(UTC)

    with pytest.raises(IntegrityError), transaction.atomic():
        Alarm.objects.create(source=AlarmSource.PROCESS, priority="high", message="no rule",
                             state=AlarmState.ACTIVE_UNACKNOWLEDGED, condition_started_at=now, activated_at=now)
