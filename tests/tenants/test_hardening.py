"""Production settings, the Content Security Policy, unknown hosts and login rate limits."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.throttling import AuthenticationRateThrottle
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS

BASE_DIR = Path(settings.BASE_DIR)
TEMPLATE_DIRS = [BASE_DIR / "templates", *BASE_DIR.glob("apps/*/templates")]
# Inline code that a policy without 'unsafe-inline' blocks.
INLINE_CODE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE), "inline <script>"),
    (re.compile(r"<style\b", re.IGNORECASE), "<style> element"),
    (re.compile(r"\sstyle=", re.IGNORECASE), "style attribute"),
    (re.compile(r"\son[a-z]+=", re.IGNORECASE), "event handler attribute"),
    (re.compile(r"\shx-on", re.IGNORECASE), "hx-on attribute"),
    (re.compile(r"javascript:", re.IGNORECASE), "javascript: URL"),
]


def run_manage(*args, **env):
    environment = {**os.environ, "THERMACORE_ENV": "production",
                   "THERMACORE_SECRET_KEY": secrets.token_urlsafe(50), **env}
    return subprocess.run([sys.executable, "manage.py", *args], check=False, cwd=BASE_DIR, env=environment,
                          capture_output=True, text=True, timeout=120)


def production_settings(*names, **env):
    code = "import json; from django.conf import settings; " \
           f"print(json.dumps({{name: repr(getattr(settings, name, None)) for name in {list(names)!r}}}))"
    result = run_manage("shell", "--no-imports", "-c", code, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_deploy_check_has_no_warnings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    # security.W021 (HSTS preload) is the one silenced check; THERMACORE_HSTS_PRELOAD decides it.
    assert "System check identified no issues (1 silenced)." in result.stdout


PRODUCTION_SETTINGS = {
    "DEBUG": "False",
    "SESSION_COOKIE_SECURE": "True",
    "SESSION_COOKIE_HTTPONLY": "True",
    "CSRF_COOKIE_SECURE": "True",
    "CSRF_COOKIE_HTTPONLY": "True",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "True",
    "SECURE_SSL_REDIRECT": "True",
    "X_FRAME_OPTIONS": "'DENY'",
    "SECURE_PROXY_SSL_HEADER": "None",
    "ALLOWED_HOSTS": "['*']",
}


def test_production_settings():
    actual = production_settings(*PRODUCTION_SETTINGS)

    for name, expected in PRODUCTION_SETTINGS.items():
        assert actual[name] == expected, name


def test_proxy_ssl_header_only_when_configured():
    actual = production_settings("SECURE_PROXY_SSL_HEADER", THERMACORE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO=https")

    assert actual["SECURE_PROXY_SSL_HEADER"] == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_production_without_secret_key_fails_clearly():
    environment = {key: value for key, value in os.environ.items() if key != "THERMACORE_SECRET_KEY"}
    environment["THERMACORE_ENV"] = "production"

    result = subprocess.run([sys.executable, "manage.py", "check"], check=False, cwd=BASE_DIR, env=environment,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    assert "THERMACORE_SECRET_KEY is missing" in result.stderr


@pytest.mark.parametrize("template", sorted(
    path for directory in TEMPLATE_DIRS for path in directory.rglob("*.html")
), ids=lambda path: str(path.relative_to(BASE_DIR)))
def test_template_has_no_inline_code(template):
    text = template.read_text(encoding="utf-8")

    found = [name for pattern, name in INLINE_CODE if pattern.search(text)]

    assert found == []


@pytest.mark.parametrize("path", ["/", "/alarms/", "/admin/", "/api/docs/", "/accounts/password_change/"])
def test_pages_send_content_security_policy(alpha_client, path):
    response = alpha_client.get(path)

    policy = response["Content-Security-Policy"]
    assert response.status_code == 200
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response["X-Frame-Options"] == "DENY"


def test_page_html_has_no_inline_script(alpha_client):
    for path in ["/", "/alarms/", "/admin/", "/api/docs/"]:
        html = alpha_client.get(path).content.decode()

        assert not INLINE_CODE[0][0].search(html), path


def test_api_docs_script_is_a_file(alpha_client):
    response = alpha_client.get("/api/docs/?script=")

    assert response.status_code == 200
    assert "SwaggerUIBundle" in response.content.decode()


def test_unknown_host_is_400_naming_it(db):
    client = Client(HTTP_HOST="gamma.localhost")

    response = client.get("/api/v1/sites/")

    assert response.status_code == 400
    assert response.content.decode() == (
        "Host 'gamma.localhost' is not a domain of any tenant on this server; check the address."
    )


@pytest.fixture
def strict_authentication_rate(monkeypatch):
    # The rate table is read when DRF imports the throttle module, so the test replaces it on the class.
    monkeypatch.setattr(AuthenticationRateThrottle, "THROTTLE_RATES", {"authentication": "2/min"})


def test_login_page_posts_are_rate_limited(alpha, strict_authentication_rate):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    attempts = [client.post("/accounts/login/", {"username": f"guess-{n}", "password": "x"}) for n in range(2)]

    limited = client.post("/accounts/login/", {"username": "admin", "password": ADMIN_PASSWORD})

    assert [attempt.status_code for attempt in attempts] == [200, 200]
    assert limited.status_code == 429
    assert limited.content.decode().startswith("Too many login attempts from this address (limit 2/min); try again in ")
    assert int(limited["Retry-After"]) > 0


def test_login_page_get_is_not_limited(alpha, strict_authentication_rate):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])

    statuses = [client.get("/accounts/login/").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 200]


def test_admin_login_is_rate_limited(alpha, strict_authentication_rate):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    for n in range(2):
        client.post("/admin/login/", {"username": f"guess-{n}", "password": "x"})

    limited = client.post("/admin/login/", {"username": "admin", "password": ADMIN_PASSWORD})

    assert limited.status_code == 429


@pytest.mark.parametrize("path", ["/api/v1/auth/token/", "/api/v1/auth/token/refresh/"])
def test_token_endpoints_are_rate_limited(alpha, strict_authentication_rate, path):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    for n in range(2):
        client.post(path, {"username": f"guess-{n}", "password": "x", "refresh": "x"}, format="json")

    limited = client.post(path, {"username": "admin", "password": ADMIN_PASSWORD}, format="json")

    assert limited.status_code == 429
    assert "Retry-After" in limited
