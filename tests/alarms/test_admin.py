import pytest

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm

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
