import os
import subprocess
import sys
from pathlib import Path

from thermacore.celery import app

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def import_settings(**env):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("THERMACORE_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import thermacore.settings as s; print(s.DEBUG)"],
        cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=60,
    )


def test_production_without_secret_key_fails_clearly():
    result = import_settings(THERMACORE_ENV="production")

    assert result.returncode != 0
    assert "THERMACORE_SECRET_KEY is missing" in result.stderr


def test_production_turns_debug_off():
    result = import_settings(THERMACORE_ENV="production", THERMACORE_SECRET_KEY="x" * 50)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_development_defaults_to_debug():
    result = import_settings()

    assert result.stdout.strip() == "True"


def test_beat_schedule_names_registered_tasks():
    app.loader.import_default_modules()

    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks, entry["task"]


def test_task_names_are_stable():
    app.loader.import_default_modules()

    names = {name for name in app.tasks if not name.startswith("celery.")}

    assert {"protocols.poll_due_devices", "telemetry.ensure_partitions"} <= names
