"""Security monitoring: each trigger raises exactly one security alarm at its exact threshold."""

from datetime import UTC, datetime, time, timedelta
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import transaction
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.services import create_api_key
from apps.audit.choices import ActorType, AuditAction, Outcome, SecurityTrigger
from apps.audit.models import AuditEntry, AuditSettings
from apps.audit.monitoring import MONITOR_JOB, is_working_time, network_of
from apps.audit.services import Actor, record
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import TENANT_DOMAINS, access_token_for, admin_of

LIMIT = 3


@pytest.fixture
def monitoring(alpha):
    """Alpha's settings with small limits: 3 failed logins in 5 minutes, 3 denials in 10 minutes."""
    return AuditSettings.objects.create(
        failed_login_limit=LIMIT, failed_login_window_minutes=5, denial_limit=LIMIT, denial_window_minutes=10,
    )


def alarms_after(start, trigger=None):
    alarms = [entry for entry in entries_after(start) if entry.action == AuditAction.SECURITY_ALARM]
    return [alarm for alarm in alarms if trigger is None or alarm.detail["trigger"] == trigger]


def fail_login(username, address):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR=address)
    response = client.post("/accounts/login/", {"username": username, "password": "wrong-guess"})
    assert response.status_code == 200


def test_failed_logins_per_username_at_limit(monitoring):
    start = chain_head()

    for attempt in range(LIMIT - 1):
        fail_login("admin", f"192.0.2.{attempt + 1}")
    assert alarms_after(start) == []

    fail_login("admin", "192.0.2.50")
    [alarm] = alarms_after(start)
    assert alarm.detail["trigger"] == SecurityTrigger.FAILED_LOGIN_BURST
    assert alarm.detail["username"] == "admin"
    assert "source_ip" not in alarm.detail
    assert (alarm.actor_type, alarm.actor_id) == (ActorType.SYSTEM_JOB, MONITOR_JOB)
    assert alarm.detail["message"] == "3 failed logins in 5 minutes for username admin."

    # The burst goes on, but it has raised its alarm already.
    fail_login("admin", "192.0.2.51")
    assert len(alarms_after(start)) == 1


def test_failed_logins_per_address_at_limit(monitoring):
    start = chain_head()

    for name in ("anna", "bert"):
        fail_login(name, "198.51.100.7")
    assert alarms_after(start) == []

    fail_login("carl", "198.51.100.7")
    [alarm] = alarms_after(start)
    assert alarm.detail["source_ip"] == "198.51.100.7"
    assert "username" not in alarm.detail
    cause = AuditEntry.objects.get(sequence=alarm.detail["cause_sequence"])
    assert (cause.action, cause.detail["username"]) == (AuditAction.LOGIN_FAILED, "carl")


def test_failed_logins_outside_window_ignored(monitoring):
    start = chain_head()
    long_ago = datetime.now(UTC) - timedelta(minutes=6)
    with mock.patch("apps.audit.services.timezone.now", return_value=long_ago):
        for attempt in range(LIMIT - 1):
            fail_login("admin", f"192.0.2.{attempt + 1}")

    fail_login("admin", "192.0.2.60")

    assert alarms_after(start) == []


@pytest.fixture
def outsider(alpha):
    user = get_user_model().objects.create_user(username="outsider", password="Outsider-pass-4711", role=Role.VIEWER)
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR="192.0.2.20")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', user)}")
    return client


def test_repeated_denials_at_limit(monitoring, outsider):
    start = chain_head()

    for _ in range(LIMIT - 1):
        assert outsider.post("/api/v1/sites/", {"name": "Nope"}, format="json").status_code == 403
    assert alarms_after(start, SecurityTrigger.DENIAL_BURST) == []

    outsider.post("/api/v1/sites/", {"name": "Nope"}, format="json")
    [alarm] = alarms_after(start, SecurityTrigger.DENIAL_BURST)
    assert alarm.detail["actor_name"] == "outsider"
    assert alarm.detail["message"] == "outsider was denied 3 times in 10 minutes."

    outsider.post("/api/v1/sites/", {"name": "Nope"}, format="json")
    assert len(alarms_after(start, SecurityTrigger.DENIAL_BURST)) == 1


def test_denials_of_other_users_counted_apart(monitoring, outsider):
    other = get_user_model().objects.create_user(username="other", password="Other-pass-4711", role=Role.VIEWER)
    start = chain_head()

    for _ in range(LIMIT - 1):
        outsider.post("/api/v1/sites/", {"name": "Nope"}, format="json")
    record(AuditAction.PERMISSION_DENIED, actor=other, outcome=Outcome.DENIED, detail={"path": "/x/"})

    assert alarms_after(start, SecurityTrigger.DENIAL_BURST) == []


def bearer_client(address):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")
    return client


def test_token_from_new_network_alarms(alpha):
    start = chain_head()

    assert bearer_client("192.0.2.5").get("/api/v1/sites/").status_code == 200
    bearer_client("192.0.2.77").get("/api/v1/sites/")
    assert alarms_after(start) == [], "The first network sets the baseline, and the same /24 is not new."

    bearer_client("198.51.100.9").get("/api/v1/sites/")
    [alarm] = alarms_after(start)
    assert alarm.detail["trigger"] == SecurityTrigger.NEW_NETWORK
    assert (alarm.detail["credential_type"], alarm.detail["network"]) == ("jwt", "198.51.100.0/24")
    assert alarm.source_ip == "198.51.100.9"

    bearer_client("198.51.100.10").get("/api/v1/sites/")
    assert len(alarms_after(start)) == 1


def test_api_key_from_new_network_alarms(alpha):
    api_key, key = create_api_key(name="Historian", role=Role.VIEWER, actor=admin_of("alpha"))
    start = chain_head()

    for address in ("203.0.113.4", "2001:db8:1:2::5"):
        client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR=address)
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        assert client.get("/api/v1/sites/").status_code == 200

    [alarm] = alarms_after(start)
    assert alarm.detail["credential_id"] == api_key.prefix
    assert alarm.detail["network"] == "2001:db8:1:2::/64"
    assert "Historian" in alarm.detail["message"]


def test_session_requests_not_tracked(alpha_client):
    start = chain_head()

    alpha_client.get("/audit/", REMOTE_ADDR="192.0.2.1")
    alpha_client.get("/audit/", REMOTE_ADDR="198.51.100.1")

    assert alarms_after(start) == []


def test_network_of_masks_host_bits():
    assert network_of("192.0.2.200") == "192.0.2.0/24"
    assert network_of("2001:db8::1") == "2001:db8::/64"


def write_setpoint_entry():
    return record(AuditAction.SETPOINT_WRITTEN, actor=admin_of("alpha"), detail={"requested": 55.0})


def test_setpoint_outside_working_hours_alarms(alpha):
    # No working day at all, so every moment is outside the working hours.
    AuditSettings.objects.create(
        working_days=[], working_hours_start=time(6, 0), working_hours_end=time(18, 0), time_zone="Europe/Berlin"
    )
    start = chain_head()

    entry = write_setpoint_entry()

    [alarm] = alarms_after(start)
    assert alarm.detail["trigger"] == SecurityTrigger.OFF_HOURS_SETPOINT
    assert alarm.detail["cause_sequence"] == entry.sequence
    assert "outside the working hours" in alarm.detail["message"]


def test_setpoint_without_working_hours_quiet(alpha):
    AuditSettings.objects.create(working_days=[])
    start = chain_head()

    write_setpoint_entry()

    assert alarms_after(start) == []


def test_setpoint_inside_working_hours_quiet(alpha):
    AuditSettings.objects.create(working_days=list(range(7)), working_hours_start=time(0, 0),
                                 working_hours_end=time(23, 59, 59, 999999))
    start = chain_head()

    write_setpoint_entry()

    assert alarms_after(start) == []


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 5, 5, 0, tzinfo=UTC), True),  # Monday 06:00 in Berlin: the start is inside
        (datetime(2026, 1, 5, 4, 59, 59, tzinfo=UTC), False),  # 05:59:59 in Berlin
        (datetime(2026, 1, 5, 16, 59, tzinfo=UTC), True),  # 17:59 in Berlin
        (datetime(2026, 1, 5, 17, 0, tzinfo=UTC), False),  # 18:00 in Berlin: the end is outside
        (datetime(2026, 1, 10, 10, 0, tzinfo=UTC), False),  # Saturday
        (datetime(2026, 7, 6, 4, 0, tzinfo=UTC), True),  # Monday 06:00 in Berlin summer time
    ],
)
def test_working_time_boundaries(moment, expected):
    settings = AuditSettings(time_zone="Europe/Berlin", working_hours_start=time(6, 0), working_hours_end=time(18, 0))

    assert is_working_time(settings, moment) is expected


def test_alarm_mailed_to_admins(alpha, django_capture_on_commit_callbacks):
    admin = admin_of("alpha")
    admin.email = "admin@alpha.example"
    admin.save(update_fields=["email"])
    AuditSettings.objects.create(working_days=[], working_hours_start=time(6, 0), working_hours_end=time(18, 0))

    with django_capture_on_commit_callbacks(execute=True):
        write_setpoint_entry()

    [message] = mail.outbox
    assert message.to == ["admin@alpha.example"]
    assert "Setpoint written outside working hours" in message.subject
    assert "security.alarm" in message.body


def test_alarm_rolls_back_with_its_cause(alpha):
    AuditSettings.objects.create(working_days=[], working_hours_start=time(6, 0), working_hours_end=time(18, 0))
    start = chain_head()

    with pytest.raises(RuntimeError), transaction.atomic():
        write_setpoint_entry()
        raise RuntimeError("device write failed after the audit entry")

    assert entries_after(start) == []


def test_alarms_filterable_in_viewer(alpha_client, alpha_api):
    AuditSettings.objects.create(working_days=[], working_hours_start=time(6, 0), working_hours_end=time(18, 0))
    write_setpoint_entry()
    record(AuditAction.LOGIN, actor=Actor.system_job("other"))
    [alarm] = AuditEntry.objects.filter(action=AuditAction.SECURITY_ALARM)

    page = alpha_client.get("/audit/", {"action": "security.alarm", "trigger": "off_hours_setpoint"})
    api = alpha_api.get("/api/v1/audit/entries/", {"trigger": "off_hours_setpoint"})

    assert page.status_code == 200
    assert [entry.sequence for entry in page.context["entries"]] == [alarm.sequence]
    assert [entry["sequence"] for entry in api.json()["results"]] == [alarm.sequence]


def test_alarm_reaches_alarm_system(monitoring):
    from apps.alarms.models import Alarm

    for attempt in range(LIMIT):
        fail_login("admin", f"192.0.2.{attempt + 1}")

    [alarm] = Alarm.objects.security()
    assert alarm.key == "failed_login_burst:username=admin"
    assert alarm.message == "3 failed logins in 5 minutes for username admin."


def test_failing_receiver_keeps_entry_and_mails(alpha, django_capture_on_commit_callbacks):
    from apps.alarms.models import Alarm
    from apps.audit.monitoring import security_alarm_raised

    def broken_receiver(sender, **kwargs):
        raise RuntimeError("receiver bug")

    admin = admin_of("alpha")
    admin.email = "admin@alpha.example"
    admin.save(update_fields=["email"])
    AuditSettings.objects.create(working_days=[], working_hours_start=time(6, 0), working_hours_end=time(18, 0))
    start = chain_head()
    security_alarm_raised.connect(broken_receiver, dispatch_uid="test_broken_receiver")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            entry = write_setpoint_entry()
    finally:
        security_alarm_raised.disconnect(dispatch_uid="test_broken_receiver")

    assert [alarm.sequence for alarm in alarms_after(start)] == [entry.sequence + 1]
    # The alarm system's own receiver still ran.
    assert Alarm.objects.security().count() == 1
    [message] = mail.outbox
    assert message.to == ["admin@alpha.example"]
