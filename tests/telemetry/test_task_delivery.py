"""Task delivery with late acknowledgement on the Redis broker: one side effect per task.

The timings are scaled down from production, keeping their order. There the
visibility timeout is 7200 s, and countdowns and task time limits reach
3600 s. Here the visibility timeout is 8 s, the countdown 4 s and the task
4 s. kombu's scan for expired unacknowledged messages runs every second
instead of about every 100 s. A worker runs in a subprocess against a
private redis-server.
"""

import importlib
import os
import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings

from tests.telemetry.conftest import RedisServer
from thermacore.celery import app as project_app

VISIBILITY_TIMEOUT = 8
COUNTDOWN = 4
TASK_SECONDS = 4


@pytest.fixture
def broker(tmp_path, monkeypatch):
    server = RedisServer(tmp_path)
    server.start()
    monkeypatch.setenv("PROBE_BROKER_URL", server.url)
    monkeypatch.setenv("PROBE_VISIBILITY_TIMEOUT", str(VISIBILITY_TIMEOUT))
    probe = importlib.reload(importlib.import_module("tests.telemetry.celery_probe"))
    yield server, probe
    server.kill()


class Worker:
    def __init__(self):
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.telemetry.celery_probe", "worker", "--pool=solo",
             "--queues=probe", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
            env={**os.environ, "PYTHONPATH": str(settings.BASE_DIR)}, cwd=settings.BASE_DIR,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def worker():
    worker = Worker()
    yield worker
    if worker.process is not None and worker.process.poll() is None:
        worker.kill()


def _events(server, event):
    return redis.Redis.from_url(server.url).llen(f"probe:{event}")


def _wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_visibility_timeout_exceeds_time_limits():
    project_app.loader.import_default_modules()
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    limits = {name: task.time_limit for name, task in project_app.tasks.items() if task.time_limit}

    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_TASK_REJECT_ON_WORKER_LOST is True
    for name, limit in limits.items():
        assert limit < visibility, name


def test_scheduled_and_long_tasks_run_once(broker, worker):
    server, probe = broker
    worker.start()
    probe.scheduled_task.apply_async(countdown=COUNTDOWN)
    probe.long_task.delay(TASK_SECONDS)

    assert _wait_for(lambda: _events(server, "long:finished") == 1, 30)
    assert _wait_for(lambda: _events(server, "scheduled") == 1, 30)
    # Past the visibility timeout plus the transport's restore scan, a redelivery would have run.
    time.sleep(VISIBILITY_TIMEOUT + 3)

    assert _events(server, "scheduled") == 1
    assert _events(server, "long:started") == 1
    assert _events(server, "long:finished") == 1


def test_killed_worker_task_finishes_once(broker, worker):
    server, probe = broker
    worker.start()
    probe.long_task.delay(TASK_SECONDS)
    assert _wait_for(lambda: _events(server, "long:started") == 1, 30)
    worker.kill()
    worker.start()

    # The unacknowledged message returns after the visibility timeout, at the next restore scan.
    assert _wait_for(lambda: _events(server, "long:finished") == 1, VISIBILITY_TIMEOUT + TASK_SECONDS + 20)
    time.sleep(2)

    assert _events(server, "long:started") == 2
    assert _events(server, "long:finished") == 1
