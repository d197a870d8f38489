"""Django settings for ThermaCore.

Every value comes from the environment (or a `.env` file beside manage.py)
through django-environ. The defaults suit a developer machine; production
sets THERMACORE_ENV=production, which turns DEBUG off and makes the secret
key mandatory.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

THERMACORE_ENV = env.str("THERMACORE_ENV", default="development")
if THERMACORE_ENV not in ("development", "production"):
    raise ImproperlyConfigured(
        f"THERMACORE_ENV={THERMACORE_ENV!r} is invalid; use 'development' or 'production'."
    )
IS_PRODUCTION = THERMACORE_ENV == "production"

DEBUG = env.bool("THERMACORE_DEBUG", default=not IS_PRODUCTION)

if IS_PRODUCTION and "THERMACORE_SECRET_KEY" not in env.ENVIRON:
    raise ImproperlyConfigured(
        "THERMACORE_SECRET_KEY is missing: production needs a long random secret, "
        "for example from `python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
    )
# The development key is public on purpose, so it must never sign production data.
SECRET_KEY = env.str("THERMACORE_SECRET_KEY", default="dev-only-insecure-key-change-me-0123456789abcdef")

# Tenant domains are subdomains; a leading dot matches all of them. In
# production the Domain table is the list of allowed hosts: django-tenants looks
# up every Host header there and DEFAULT_NOT_FOUND_TENANT_VIEW returns 400 for
# any other, so a new tenant needs no restart.
ALLOWED_HOSTS = env.list(
    "THERMACORE_ALLOWED_HOSTS", default=["*"] if IS_PRODUCTION else [".localhost", "127.0.0.1", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env.list("THERMACORE_CSRF_TRUSTED_ORIGINS", default=["http://*.localhost:8000"])

# Applications ---------------------------------------------------------------

# Apps whose tables live once, in the public schema.
SHARED_APPS = [
    # First, so that its delete_tenant command, which demands an export, replaces django-tenants' unchecked one.
    "apps.tenants",
    "django_tenants",
    # runserver serves WebSockets through Daphne; the demo and the image run uvicorn.
    "daphne",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "apps.accounts",
    # Django's admin whose default site asks the role layer (apps.accounts.roles).
    "apps.accounts.apps.TenantAdminConfig",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "channels",
    "django_guid",
    # Failed logins on the platform admin are counted in the public schema.
    "axes",
    # Periodic tasks of every tenant (CELERY_BEAT_SCHEDULE) are stored in the public schema.
    "django_celery_beat",
    # Refresh tokens of platform staff (apps.tenants.platform_tokens); each tenant keeps its own as well.
    "rest_framework_simplejwt.token_blacklist",
]

# Apps whose tables every tenant schema gets its own copy of. Users live here
# too, so each tenant has its own accounts.
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "apps.accounts",
    "apps.accounts.apps.TenantAdminConfig",
    "django.contrib.sessions",
    "django.contrib.messages",
    "apps.units",
    "apps.sensors",
    "apps.protocols",
    "apps.telemetry",
    "apps.alarms",
    "apps.dashboards",
    "apps.api",
    "apps.audit",
    # Issued and revoked refresh tokens, and failed logins, are kept per tenant schema.
    "rest_framework_simplejwt.token_blacklist",
    "axes",
    # Provides the key hashing of apps.accounts.models.ApiKey; its own APIKey table stays unused.
    "rest_framework_api_key",
    # TOTP devices of users whose role the tenant's policy requires a second factor for.
    "django_otp",
    "django_otp.plugins.otp_totp",
    # Periodic tasks of one tenant, such as its poll groups (apps.protocols.schedules).
    "django_celery_beat",
]

INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_URLCONF = "thermacore.urls_public"
ROOT_URLCONF = "thermacore.urls"
SHOW_PUBLIC_IF_NO_TENANT_FOUND = False
DEFAULT_NOT_FOUND_TENANT_VIEW = "apps.tenants.views.unknown_host"

AUTH_USER_MODEL = "accounts.User"

MIDDLEWARE = [
    # Static files are served before the tenant lookup, which would cost a query each.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Sets the request id (X-Request-ID) that logs and audit entries carry.
    "django_guid.middleware.guid_middleware",
    "django_tenants.middleware.main.TenantMainMiddleware",
    # Rejects every request to a suspended tenant, logins included.
    "apps.tenants.middleware.TenantSuspensionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Sets request.user.is_verified() from the TOTP step of the session.
    "django_otp.middleware.OTPMiddleware",
    # The tenant's session timeout, its two-factor roles and the networks allowed to call its API.
    "apps.tenants.policy.TenantSecurityPolicyMiddleware",
    "apps.audit.middleware.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Turns a lockout found during login into a 429 response; must stay last.
    "axes.middleware.AxesMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.capabilities",
            ],
        },
    },
]

WSGI_APPLICATION = "thermacore.wsgi.application"
ASGI_APPLICATION = "thermacore.asgi.application"

# Storage ----------------------------------------------------------------------

DATABASES = {
    "default": env.db_url(
        "THERMACORE_DATABASE_URL",
        default="postgres://postgres@127.0.0.1:5432/thermacore",
        engine="django_tenants.postgresql_backend",
    ),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("THERMACORE_DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["TEST"] = {"NAME": env.str("THERMACORE_TEST_DATABASE", default="test_thermacore")}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("THERMACORE_REDIS_URL", default="redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Cache keys carry the tenant schema so tenants never read each other's entries.
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
    },
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 reads with a 5 s socket timeout by default, the same as channels_redis's 5 s
            # BZPOPMIN wait, so an idle consumer could fail with "Timeout reading"; 15 s leaves a margin.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            # Messages waiting for one server process (channels_redis 4.3 keeps one Redis sorted set per process
            # for all its sockets) and, in that process, for one socket. Beyond it, sends are dropped
            # instead of blocking the sender, and the consumers see the gap in group_seq and resync.
            # With 200, a client that read as fast as it could got 4,965 of 6,000 alarm changes sent
            # within about 10 s (one test run). An alarm message is about 1 KB (an estimate), so a full
            # queue costs about 1 MB of Redis or of server memory.
            "capacity": 1000,
            "expiry": 30,
        },
    },
}
# Seconds one WebSocket send of the live consumer may wait for a client that does not read before the
# consumer drops its messages and ends. Longer than uvicorn's keepalive window (--ws-ping-interval plus
# --ws-ping-timeout, 10 + 10 s in Procfile.demo and the image), so uvicorn closes such a client first.
LIVE_SEND_TIMEOUT_SECONDS = env.float("THERMACORE_LIVE_SEND_TIMEOUT_SECONDS", default=30.0)

# Telemetry ------------------------------------------------------------------

# Readings further ahead of the server clock than this are rejected: they come
# from a device with a wrong clock and would otherwise hide later live values.
TELEMETRY_MAX_FUTURE_SECONDS = env.int("THERMACORE_MAX_FUTURE_SECONDS", default=300)
# Readings older than this many days are rejected for tenants without retention_days, because each
# day of back-filled history creates a partition. Ten years covers the archives of most plant historians.
TELEMETRY_MAX_AGE_DAYS = env.int("THERMACORE_MAX_AGE_DAYS", default=3650)
# How many days of reading partitions exist ahead of today (native partitioning).
TELEMETRY_PARTITIONS_AHEAD_DAYS = env.int("THERMACORE_PARTITIONS_AHEAD_DAYS", default=7)
# A readings write that takes longer than this, in seconds, is abandoned and
# its batch spooled to Redis, so that a slow PostgreSQL does not stall the pollers.
TELEMETRY_WRITE_TIMEOUT_SECONDS = env.float("THERMACORE_WRITE_TIMEOUT_SECONDS", default=10.0)
# Redis holding the spool of batches PostgreSQL could not take; run it with appendonly yes.
TELEMETRY_SPOOL_URL = env.str("THERMACORE_SPOOL_URL", default=REDIS_URL)
# Pollers append their samples to the intake stream in the spool's Redis, for `manage.py run_ingest` to
# store, instead of storing them in the poll worker. Off, they store each batch themselves.
TELEMETRY_INTAKE_QUEUE = env.bool("THERMACORE_INTAKE_QUEUE", default=True)
# Seconds an intake entry may stay read but unacknowledged before another run_ingest process takes it over.
TELEMETRY_INTAKE_CLAIM_IDLE_SECONDS = env.float("THERMACORE_INTAKE_CLAIM_IDLE_SECONDS", default=60.0)
# Entries the intake stream may hold before pollers store their batches directly for 30 s. An entry is
# the batch of one poll worker's 0.25 s, at 26 bytes per value. With 1,000 devices of 50 values polled
# every second that is about 0.3 MB, so the default bounds the stream at about 1.6 GB (an estimate).
TELEMETRY_INTAKE_MAX_ENTRIES = env.int("THERMACORE_INTAKE_MAX_ENTRIES", default=5000)
if TELEMETRY_INTAKE_MAX_ENTRIES < 1:
    raise ImproperlyConfigured(
        f"THERMACORE_INTAKE_MAX_ENTRIES is {TELEMETRY_INTAKE_MAX_ENTRIES}; set a whole number of entries of 1 or more."
    )
# Largest upload in bytes that POST /api/v1/ingest/csv/ imports in the request. Larger ones get 413.
TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES = env.int("THERMACORE_CSV_IMPORT_MAX_SYNC_BYTES", default=10 * 1024 * 1024)
# Upper bound of the back-off between polls of an unreachable device.
PROTOCOLS_MAX_BACKOFF_SECONDS = env.int("THERMACORE_MAX_BACKOFF_SECONDS", default=300)
# Seconds a setpoint write routed to the gateway waits beyond the DNP3 device's own timeouts for its reply.
PROTOCOLS_GATEWAY_REPLY_MARGIN_SECONDS = env.float("THERMACORE_GATEWAY_REPLY_MARGIN_SECONDS", default=5.0)
# Seconds a pooled Modbus TCP connection may stay unused before the worker closes it.
PROTOCOLS_MODBUS_IDLE_SECONDS = env.float("THERMACORE_MODBUS_IDLE_SECONDS", default=120.0)
# Fernet key that encrypts the private keys of stored certificates; empty to derive one from SECRET_KEY.
THERMACORE_CERT_KEY = env.str("THERMACORE_CERT_KEY", default="")
# Directory whose files MQTT devices may name as TLS CA, certificate or key files; empty rejects all such paths.
THERMACORE_TLS_FILES_DIR = env.str("THERMACORE_TLS_FILES_DIR", default="")

# Celery ---------------------------------------------------------------------

CELERY_BROKER_URL = env.str("THERMACORE_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Reads periodic tasks from the database (django-celery-beat) in the public
# schema and in each active tenant's schema, and sends them to active tenants only.
CELERY_BEAT_SCHEDULER = "apps.tenants.scheduler.ActiveTenantScheduler"
# Seconds between checks of the database for changed periodic tasks, so an
# edited poll group takes effect within this time without restarting beat.
CELERY_BEAT_MAX_LOOP_INTERVAL = 5
# Only the file-based scheduler reads this; the database scheduler ignores it.
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "THERMACORE_BEAT_SCHEDULE_FILE", default=str(BASE_DIR / "var" / "celerybeat-schedule")
)
CELERY_TASK_ROUTES = {
    "protocols.*": {"queue": "polling"},
}
CELERY_TASK_DEFAULT_QUEUE = "default"
# A poll that is already late is useless; drop it instead of piling up.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A task is acknowledged after it ran, and put back when its worker dies
# mid-task, so a crash never loses it; tasks must therefore be idempotent.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# The Redis transport hands an unacknowledged message to another worker after
# this many seconds. It must exceed the longest task time_limit (3600 s) and
# the longest countdown or ETA, or that task runs twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("THERMACORE_BROKER_VISIBILITY_TIMEOUT", default=7200),
}
CELERY_TASK_TENANT_CACHE_SECONDS = 30
# Keep Django's LOGGING in the worker, so its records carry the tenant schema too.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    # Without a "tenant_schemas" key the tenant-aware scheduler sends each
    # entry once per tenant schema. The database scheduler keeps only the
    # "expire_seconds" option of an entry and drops "expires".
    "poll-due-devices": {
        "task": "protocols.poll_due_devices",
        "schedule": 1.0,
        "options": {"expire_seconds": 5},
    },
    "ensure-reading-partitions": {
        "task": "telemetry.ensure_partitions",
        "schedule": 3600.0,
    },
    "replay-reading-spool": {
        "task": "telemetry.replay_spool",
        "schedule": 10.0,
        "options": {"expire_seconds": 20},
    },
    "warn-expiring-certificates": {
        "task": "protocols.warn_expiring_certificates",
        "schedule": 86400.0,
    },
    "apply-audit-retention": {
        "task": "audit.apply_retention",
        "schedule": 86400.0,
    },
    "delete-old-audit-exports": {
        "task": "audit.delete_old_exports",
        "schedule": 3600.0,
    },
    # Drops the daily reading partitions older than each tenant's retention_days.
    "apply-reading-retention": {
        "task": "telemetry.apply_retention",
        "schedule": 86400.0,
    },
    "run-alarm-timers": {
        "task": "alarms.run_timers",
        "schedule": 5.0,
        "options": {"expire_seconds": 10},
    },
    # Queues again the alarm notifications whose Celery task was lost, e.g. while the broker was down.
    "requeue-pending-notifications": {
        "task": "alarms.requeue_pending_deliveries",
        "schedule": 60.0,
        "options": {"expire_seconds": 60},
    },
    # Sent to the public schema only: queues lost provisioning jobs and tenant exports again and fails those
    # of killed workers (apps.tenants.recovery). Needs the public schema's tenant row (ensure_public_tenant).
    "recover-stuck-tenant-jobs": {
        "task": "tenants.recover_stuck_jobs",
        "schedule": 300.0,
        "tenant_schemas": ["public"],
        "options": {"expire_seconds": 300},
    },
    # Fetches CRLs from distribution points: each URL daily, and on every run after a failed fetch or from one
    # day before its CRL's next update.
    "refresh-crls": {
        "task": "protocols.refresh_crls",
        "schedule": 3600.0,
    },
    # Fails the running CSV import jobs whose worker died, also those that no client polls.
    "fail-interrupted-csv-imports": {
        "task": "telemetry.fail_interrupted_csv_imports",
        "schedule": 300.0,
        "options": {"expire_seconds": 300},
    },
}

# Authentication and API -----------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    # Django's MinimumLengthValidator with the length from the tenant's security policy.
    {"NAME": "apps.tenants.policy.TenantMinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Permissions come from the user's role alone (apps.accounts.roles).
AUTHENTICATION_BACKENDS = [
    # Rejects a locked-out user before the password is checked, and counts failures.
    "axes.backends.AxesStandaloneBackend",
    "apps.accounts.backends.RoleBackend",
]
# The lockout counts failures per user name and client address inside the
# tenant schema, because a user name alone would let anyone lock out an operator.
AXES_FAILURE_LIMIT = env.int("THERMACORE_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("THERMACORE_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# NOTE: the client address is REMOTE_ADDR (the django-axes default). Behind a
# reverse proxy every client has the proxy's address, so the lockout becomes per
# user name; set AXES_IPWARE_META_PRECEDENCE_ORDER and AXES_IPWARE_PROXY_COUNT there.
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
AXES_VERBOSE = False


def _totp_issuer(device):
    # Imported when a device builds its otpauth:// link, because models cannot load while settings do.
    from apps.accounts.two_factor import totp_issuer

    return totp_issuer(device)


# django-otp puts the issuer into the otpauth:// link and its label, e.g. "ThermaCore Acme Heating:admin".
OTP_TOTP_ISSUER = _totp_issuer
PASSWORD_RESET_TIMEOUT = env.int("THERMACORE_PASSWORD_RESET_TIMEOUT_SECONDS", default=3600)
# Development prints mail to the console; production sets e.g. smtp+tls://user:password@host:587.
EMAIL_CONFIG = env.email_url("THERMACORE_EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("THERMACORE_DEFAULT_FROM_EMAIL", default="ThermaCore <noreply@localhost>")
# Directory of the archives that audit retention writes before it drops old entries (one folder per tenant).
AUDIT_ARCHIVE_DIR = env.path("THERMACORE_AUDIT_ARCHIVE_DIR", default=str(BASE_DIR / "var" / "audit-archive"))
# Directory of the audit exports that the audit page prepares in the background (one folder per tenant).
AUDIT_EXPORT_DIR = env.path("THERMACORE_AUDIT_EXPORT_DIR", default=str(BASE_DIR / "var" / "audit-exports"))
# Uploads of CSV import jobs wait here, per schema, until their job ends.
TELEMETRY_CSV_IMPORT_DIR = env.path("THERMACORE_CSV_IMPORT_DIR", default=str(BASE_DIR / "var" / "csv-imports"))
# Days a finished audit export file is kept before audit.delete_old_exports deletes it.
AUDIT_EXPORT_RETENTION_DAYS = env.int("THERMACORE_AUDIT_EXPORT_RETENTION_DAYS", default=7)
# Directory of the tenant archives that the platform admin's export action writes (apps.tenants.backup).
TENANT_EXPORT_DIR = env.path("THERMACORE_TENANT_EXPORT_DIR", default=str(BASE_DIR / "var" / "tenant-exports"))
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboards:live"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": (
        "apps.accounts.authentication.TenantJWTAuthentication",
        "apps.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ),
    # Every endpoint checks the role layer, and anonymous requests get 401.
    "DEFAULT_PERMISSION_CLASSES": ("apps.accounts.permissions.RolePermission",),
    # DRF's default parsers, with JSON nesting limited so a deep body gets 400 instead of a RecursionError.
    "DEFAULT_PARSER_CLASSES": (
        "apps.api.parsers.DepthLimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ),
    "DEFAULT_PAGINATION_CLASS": "apps.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Django's errors as JSON 4xx, then DRF's handler, which also audits permission denials.
    "EXCEPTION_HANDLER": "apps.api.exceptions.exception_handler",
    "DEFAULT_FILTER_BACKENDS": (),
    # Each tenant's api_rate_limit per user or API key (apps.tenants.throttling).
    "DEFAULT_THROTTLE_CLASSES": ("apps.tenants.throttling.TenantUserRateThrottle",),
    "DEFAULT_THROTTLE_RATES": {
        # Token issue and refresh, per client address, on top of the django-axes lockout.
        "authentication": env.str("THERMACORE_AUTH_RATE_LIMIT", default="30/min"),
    },
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("THERMACORE_JWT_ACCESS_MINUTES", default=5)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("THERMACORE_JWT_REFRESH_DAYS", default=1)),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": SECRET_KEY,
    "TOKEN_OBTAIN_SERIALIZER": "apps.accounts.tokens.TenantTokenObtainPairSerializer",
    "TOKEN_REFRESH_SERIALIZER": "apps.accounts.tokens.TenantTokenRefreshSerializer",
    "TOKEN_BLACKLIST_SERIALIZER": "apps.accounts.tokens.TenantTokenBlacklistSerializer",
    # Each refresh returns a new refresh token and blacklists the old one.
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    # Tokens carry a hash of the password hash, so a password change revokes them.
    "CHECK_REVOKE_TOKEN": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "ThermaCore API",
    "DESCRIPTION": "Sites, units, sensors, devices and readings of one tenant.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The interactive docs come from drf-spectacular-sidecar, not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several fields share these choices, so each set gets one schema name.
    "ENUM_NAME_OVERRIDES": {
        "AlarmPriorityEnum": "apps.alarms.choices.Priority",
        "AlarmStateEnum": "apps.alarms.choices.AlarmState",
    },
}

# Audit trail -----------------------------------------------------------------

DJANGO_GUID = {
    "GUID_HEADER_NAME": "X-Request-ID",
    "VALIDATE_GUID": True,
    "UUID_FORMAT": "string",
}
# Client addresses come from REMOTE_ADDR alone unless a trusted proxy is
# configured: a client can write any X-Forwarded-For header it likes. Behind
# one proxy set e.g. THERMACORE_CLIENT_IP_HEADERS=HTTP_X_FORWARDED_FOR,REMOTE_ADDR
# and THERMACORE_PROXY_COUNT=1.
IPWARE_META_PRECEDENCE_ORDER = env.list("THERMACORE_CLIENT_IP_HEADERS", default=["REMOTE_ADDR"])
IPWARE_META_PROXY_COUNT = env.int("THERMACORE_PROXY_COUNT", default=None)

# Internationalisation and static files --------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "static"
# Without collectstatic, development serves files straight from the app folders.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Security -------------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = IS_PRODUCTION
# Pages send the CSRF token from the template (hx-headers), so no script needs the cookie.
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = IS_PRODUCTION
SECURE_SSL_REDIRECT = env.bool("THERMACORE_SSL_REDIRECT", default=IS_PRODUCTION)
SECURE_HSTS_SECONDS = 31536000 if IS_PRODUCTION else 0
# Every tenant is a subdomain served over HTTPS, so the rule covers them all.
SECURE_HSTS_INCLUDE_SUBDOMAINS = IS_PRODUCTION
SECURE_HSTS_PRELOAD = env.bool("THERMACORE_HSTS_PRELOAD", default=False)
# Trust X-Forwarded-Proto only behind a proxy that sets it, e.g.
# THERMACORE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO=https; a client could send it too.
if env.str("THERMACORE_PROXY_SSL_HEADER", default=""):
    SECURE_PROXY_SSL_HEADER = tuple(env.str("THERMACORE_PROXY_SSL_HEADER").split("=", 1))
X_FRAME_OPTIONS = "DENY"
# Scripts and styles come only from our static files; no template has inline
# code. 'self' covers the same-origin WebSocket of the hx-ws extension (CSP level 3).
# uPlot sets styles through the CSSOM, which style-src does not restrict.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# HSTS preloading commits the parent domain and all its subdomains to HTTPS for
# months; the operator decides it with THERMACORE_HSTS_PRELOAD, so its check is silenced.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Logging --------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        # Stamps every record with the tenant schema of the current connection.
        "tenant_context": {"()": "django_tenants.log.TenantContextFilter"},
    },
    "formatters": {
        "tenant": {
            "format": "%(asctime)s %(levelname)s [%(schema_name)s] %(name)s: %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["tenant_context"],
            "formatter": "tenant",
        },
    },
    "root": {"handlers": ["console"], "level": env.str("THERMACORE_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # django-guid logs every request's id at INFO.
        "django_guid": {"level": "WARNING"},
        # One line per task and per beat tick (every second) would drown the
        # starts, stops and errors that matter; failures are still logged.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
        "tenant_schemas_celery.scheduler": {"level": "WARNING"},
        # asyncua logs every publish result of every OPC UA subscription, values included, at INFO.
        "asyncua.common.subscription": {"level": "WARNING"},
    },
}
