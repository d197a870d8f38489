"""Settings for the test suite: the development settings with a Redis database of its own."""

import os

# Tests flush their Redis database; keep them away from the demo's data in database 0.
os.environ.setdefault("THERMACORE_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("THERMACORE_LOG_LEVEL", "WARNING")
# Polls store their samples before the task returns, as most tests expect. The intake tests turn the queue on.
os.environ.setdefault("THERMACORE_INTAKE_QUEUE", "false")

from .settings import *

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
