import pytest

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm, NotificationTarget
from apps.alarms.services import remove_rule_from_service
from apps.audit.models import AuditEntry

from .conftest import at


@pytest.fixture
def active_alarm(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0)
    feed(sensor, (at(0), 105.0))
    return Alarm.objects.get()


def test_admin_lists_alarm_and_its_transitions(alpha_client, active_alarm):
    listed = alpha_client.get("/admin/alarms/alarm/")
    detail = alpha_client.get(f"/admin/alarms/alarm/{active_alarm.pk}/change/")

    assert listed.status_code == 200
    assert active_alarm.message in listed.text
    assert detail.status_code == 200
    assert "Condition became active" in detail.text


def test_admin_rule_form_loads(alpha_client, active_alarm):
    response = alpha_client.get("/admin/alarms/alarmrule/add/")

    assert response.status_code == 200
    assert "rationale" in response.text


def test_admin_action_acknowledges_alarm(alpha_client, active_alarm):
    response = alpha_client.post(
        "/admin/alarms/alarm/",
        {"action": "acknowledge_selected", "_selected_action": [active_alarm.pk]},
        follow=True,
    )

    alarm = Alarm.objects.get()
    assert response.status_code == 200
    assert "Acknowledged 1 alarms." in response.text
    assert alarm.state == AlarmState.ACTIVE_ACKNOWLEDGED
    assert alarm.transitions.last().action == TransitionAction.ACKNOWLEDGE
    assert alarm.transitions.last().comment == "Acknowledged in the admin."


def test_admin_removes_rule_from_service_with_reason(alpha_client, active_alarm):
    rule = active_alarm.rule
    selection = {"action": "remove_selected_from_service", "_selected_action": [rule.pk]}

    reason_page = alpha_client.post("/admin/alarms/alarmrule/", selection)
    applied = alpha_client.post(
        "/admin/alarms/alarmrule/", {**selection, "apply": "1", "comment": "Transmitter replaced"}, follow=True
    )

    rule.refresh_from_db()
    alarm = Alarm.objects.get()
    entry = AuditEntry.objects.filter(object_id=str(rule.pk)).latest("pk")
    assert reason_page.status_code == 200
    assert "comment" in reason_page.text
    assert applied.status_code == 200
    assert "Removed from service: 1 alarm rules." in applied.text
    assert rule.in_service is False
    assert alarm.state == AlarmState.OUT_OF_SERVICE
    assert alarm.transitions.last().comment == "Transmitter replaced"
    assert entry.changes == {"in_service": [True, False]}


def test_admin_returns_rule_to_service(alpha_client, active_alarm, admin):
    rule = active_alarm.rule
    remove_rule_from_service(rule, actor=admin, comment="Calibration")

    alpha_client.post(
        "/admin/alarms/alarmrule/",
        {"action": "return_selected_to_service", "_selected_action": [rule.pk], "apply": "1", "comment": "Done"},
    )

    rule.refresh_from_db()
    assert rule.in_service is True
    assert Alarm.objects.get().state == AlarmState.NORMAL


def test_admin_shows_webhook_secret_once(alpha_client):
    response = alpha_client.post(
        "/admin/alarms/notificationtarget/add/",
        {"name": "Pager", "kind": "webhook", "purpose": "annunciation", "url": "http://127.0.0.1:9/hook",
         "min_priority": "high", "enabled": "on"},
        follow=True,
    )
    target = NotificationTarget.objects.get()
    listed = alpha_client.get("/admin/alarms/notificationtarget/")

    assert response.status_code == 200
    assert "Signing secret of Pager:" in response.text
    assert target.secret_encrypted
    assert "Signing secret" not in listed.text
