from django.contrib.auth import get_user_model
from django.db import models

from apps.alarms.models import Alarm
from apps.alarms.services import acknowledge_alarm

from .conftest import at


def alarm_relations_to_users():
    """Return the relations from alarm models to users, hidden ones included, as Django's deletion collects them."""
    return [
        field
        for field in get_user_model()._meta.get_fields(include_hidden=True)
        if field.auto_created and not field.concrete and field.related_model._meta.app_label == "alarms"
    ]


def test_user_deletion_leaves_alarm_tables_alone():
    # The public schema has users but no alarm tables, so deleting a user there must not reach them.
    relations = alarm_relations_to_users()

    assert sorted(f"{relation.related_model.__name__}.{relation.field.name}" for relation in relations) == [
        "Alarm.acknowledged_by",
        "Alarm.shelved_by",
        "AlarmTransition.actor",
    ]
    for relation in relations:
        assert relation.on_delete is models.DO_NOTHING, relation.field.name
        assert relation.field.db_constraint is False, relation.field.name


def test_deleted_operator_keeps_alarm_history(sensor, make_rule, feed, alpha_api):
    make_rule(condition="hi", limit=100.0)
    feed(sensor, (at(0), 105.0))
    operator = get_user_model().objects.create_user("night-shift", password="Night-shift-4711")
    acknowledge_alarm(Alarm.objects.get(), actor=operator, comment="Seen")
    operator_id = operator.pk

    operator.delete()
    alarm = Alarm.objects.get()
    response = alpha_api.get(f"/api/v1/alarms/{alarm.pk}/")

    assert alarm.acknowledged_by_id == operator_id
    assert alarm.acknowledged_by is None
    assert response.status_code == 200
    assert response.data["acknowledged_by"] is None
    assert response.data["transitions"][1]["actor"] is None
    assert response.data["transitions"][1]["comment"] == "Seen"
