"""Email and signed webhook notifications of annunciated and escalated alarms, sent after commit."""

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.utils import timezone

from apps.alarms.choices import DeliveryStatus, NotificationEvent, TransitionAction
from apps.alarms.models import Alarm, NotificationDelivery, NotificationTarget
from apps.alarms.notifications import (
    MAX_RETRIES,
    create_notification_target,
    retry_countdown,
    rotate_webhook_secret,
    verify_signature,
)
from apps.alarms.services import acknowledge_alarm
from apps.alarms.timers import escalate_unacknowledged_alarms
from apps.audit.models import AuditEntry

from .conftest import at


class WebhookReceiver:
    """An HTTP server on loopback that checks each request's HMAC-SHA256 signature and timestamp on its own.

    When ``hold`` is a ``threading.Event``, each request is recorded and sets ``arrived`` at once,
    and its response waits until ``hold`` is set (at most 30 s).
    """

    def __init__(self, secret=None, fail_first=0):
        self.secret = secret
        self.fail_first = fail_first
        self.requests = []
        self.hold = None
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers["X-ThermaCore-Timestamp"]
                expected = "sha256=" + hmac.new(
                    receiver.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
                ).hexdigest()
                valid = hmac.compare_digest(expected, self.headers["X-ThermaCore-Signature"])
                fresh = abs(time.time() - int(timestamp)) < 300
                receiver.requests.append({"body": json.loads(body), "valid": valid, "fresh": fresh})
                receiver.arrived.set()
                if receiver.hold is not None:
                    receiver.hold.wait(timeout=30)
                if not (valid and fresh):
                    status = 401
                elif len(receiver.requests) <= receiver.fail_first:
                    status = 503
                else:
                    status = 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alarms"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def webhook(receiver, admin):
    target, secret = create_notification_target(
        actor=admin, name="Pager", kind="webhook", url=receiver.url, min_priority="high"
    )
    receiver.secret = secret
    return target


def test_webhook_secret_is_stored_encrypted(webhook, receiver, admin):
    stored = NotificationTarget.objects.get(pk=webhook.pk).secret_encrypted

    assert receiver.secret not in stored
    assert len(receiver.secret) >= 40
    assert AuditEntry.objects.filter(object_id=str(webhook.pk), action="object.created").exists()


def test_annunciated_alarm_posts_signed_webhook(sensor, make_rule, feed, webhook, receiver, eager_tasks):
    make_rule(condition="hi", limit=100.0, priority="high")

    feed(sensor, (at(0), 105.0))

    alarm = Alarm.objects.get()
    delivery = NotificationDelivery.objects.get()
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["valid"] is True
    assert receiver.requests[0]["body"]["alarm"]["id"] == alarm.pk
    assert receiver.requests[0]["body"]["event"] == "annunciated"
    assert receiver.requests[0]["body"]["tenant"] == "alpha"
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 1
    assert delivery.response_status == 204
    assert delivery.transition.action == TransitionAction.ACTIVATE


def test_priority_below_target_minimum_skipped(sensor, make_rule, feed, webhook, receiver, eager_tasks):
    make_rule(condition="hi", limit=100.0, priority="medium")

    feed(sensor, (at(0), 105.0))

    assert Alarm.objects.count() == 1
    assert receiver.requests == []
    assert not NotificationDelivery.objects.exists()


def test_failing_webhook_is_retried_until_delivered(sensor, make_rule, feed, webhook, receiver, eager_tasks):
    receiver.fail_first = 2
    make_rule(condition="hi", limit=100.0, priority="critical")

    feed(sensor, (at(0), 105.0))

    delivery = NotificationDelivery.objects.get()
    assert len(receiver.requests) == 3
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 3
    assert delivery.last_error == ""


def test_wrong_secret_ends_as_failed_after_retries(sensor, make_rule, feed, webhook, receiver, admin, eager_tasks):
    rotate_webhook_secret(webhook, actor=admin)
    make_rule(condition="hi", limit=100.0, priority="high")

    feed(sensor, (at(0), 105.0))

    delivery = NotificationDelivery.objects.get()
    assert len(receiver.requests) == MAX_RETRIES + 1
    assert not any(request["valid"] for request in receiver.requests)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == MAX_RETRIES + 1
    assert delivery.response_status == 401
    assert "HTTP 401" in delivery.last_error


def test_no_notification_when_transaction_rolls_back(sensor, make_rule, webhook, receiver, eager_tasks):
    from django.db import transaction

    from apps.alarms.evaluation import Activation
    from apps.alarms.evaluator import activate

    rule = make_rule(condition="hi", limit=100.0, priority="high")

    with pytest.raises(RuntimeError), transaction.atomic():
        activate(rule, Activation(time=at(0), condition_started_at=at(0), value=105.0))
        raise RuntimeError("rolled back")

    assert receiver.requests == []
    assert not NotificationDelivery.objects.exists()


def test_email_target_receives_alarm(sensor, make_rule, feed, admin, eager_tasks):
    create_notification_target(actor=admin, name="Shift lead", kind="email", email="lead@example.com", min_priority="low")
    make_rule(condition="hi", limit=100.0, priority="low", message="Boiler 1 supply too hot")

    feed(sensor, (at(0), 105.0))

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["lead@example.com"]
    assert mail.outbox[0].subject == "[Low] Alarm active: Boiler 1 supply too hot"
    assert NotificationDelivery.objects.get().status == DeliveryStatus.DELIVERED


def test_reactivation_notifies_again(sensor, make_rule, feed, admin, eager_tasks):
    create_notification_target(actor=admin, name="Shift lead", kind="email", email="lead@example.com", min_priority="low")
    make_rule(condition="hi", limit=100.0, priority="low")

    feed(sensor, (at(0), 105.0))
    feed(sensor, (at(10), 90.0))
    feed(sensor, (at(20), 106.0))

    assert len(mail.outbox) == 2
    assert NotificationDelivery.objects.filter(event=NotificationEvent.ANNUNCIATED).count() == 2


def test_critical_alarm_escalates_once_when_unacknowledged(
    sensor, make_rule, feed, admin, eager_tasks, django_capture_on_commit_callbacks
):
    create_notification_target(
        actor=admin, name="Plant manager", kind="email", email="manager@example.com",
        purpose="escalation", escalate_after=15, min_priority="critical",
    )
    make_rule(condition="hi", limit=100.0, priority="critical")
    now = timezone.now()
    feed(sensor, (now, 105.0))

    with django_capture_on_commit_callbacks(execute=True):
        early = escalate_unacknowledged_alarms(now + timedelta(minutes=14))
        escalated = escalate_unacknowledged_alarms(now + timedelta(minutes=16))
        again = escalate_unacknowledged_alarms(now + timedelta(minutes=30))

    alarm = Alarm.objects.get()
    assert (early, escalated, again) == (0, 1, 0)
    assert alarm.escalated_at == now + timedelta(minutes=16)
    assert alarm.transitions.filter(action=TransitionAction.ESCALATE).count() == 1
    assert [message.to for message in mail.outbox] == [["manager@example.com"]]
    assert mail.outbox[0].subject.startswith("[Critical] Alarm escalated")


def test_acknowledged_alarm_does_not_escalate(sensor, make_rule, feed, admin, eager_tasks):
    create_notification_target(
        actor=admin, name="Plant manager", kind="email", email="manager@example.com",
        purpose="escalation", escalate_after=15, min_priority="critical",
    )
    make_rule(condition="hi", limit=100.0, priority="critical")
    now = timezone.now()
    feed(sensor, (now, 105.0))
    acknowledge_alarm(Alarm.objects.get(), actor=admin)

    escalated = escalate_unacknowledged_alarms(now + timedelta(minutes=20))

    assert escalated == 0
    assert mail.outbox == []


def test_retry_countdown_grows_exponentially():
    assert [retry_countdown(n) for n in range(8)] == [30, 60, 120, 240, 480, 960, 1920, 3600]


def test_verify_signature_rejects_replay_and_forgery():
    from apps.alarms.notifications import sign

    body = b'{"alarm": 1}'
    signature = sign("s3cret", 1_000_000, body)

    assert verify_signature("s3cret", timestamp="1000000", body=body, signature=signature, now=1_000_010)
    assert not verify_signature("s3cret", timestamp="1000000", body=body, signature=signature, now=1_000_400)
    assert not verify_signature("other", timestamp="1000000", body=body, signature=signature, now=1_000_010)
    assert not verify_signature("s3cret", timestamp="1000001", body=body, signature=signature, now=1_000_010)
