"""Celery app of the task delivery tests: the project's Celery settings with a private broker.

The test sets PROBE_BROKER_URL (a private redis-server) and
PROBE_VISIBILITY_TIMEOUT before a worker or the test imports this module.
Each task appends to a Redis list in that server, so the test counts side effects.
"""

import os
import time

import redis
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")

# Not the current app: shared tasks that later tests in the same process queue must keep going to the project app.
app = Celery("delivery_probe", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.broker_url = os.environ["PROBE_BROKER_URL"]
app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "visibility_timeout": float(os.environ["PROBE_VISIBILITY_TIMEOUT"]),
    # kombu scans for expired unacknowledged messages every 10 s x 10 polls by default;
    # scaled down like the visibility timeout, to every second.
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
app.conf.task_default_queue = "probe"
app.conf.task_routes = {}
app.conf.beat_schedule = {}


def record(event):
    redis.Redis.from_url(os.environ["PROBE_BROKER_URL"]).rpush(f"probe:{event}", time.time())


# shared=False keeps the probe tasks out of the project app, which takes in every shared task.
@app.task(name="probe.scheduled", shared=False)
def scheduled_task():
    record("scheduled")


@app.task(name="probe.long", shared=False)
def long_task(seconds):
    record("long:started")
    time.sleep(seconds)
    record("long:finished")
