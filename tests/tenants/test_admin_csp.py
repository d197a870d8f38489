"""The tenant and platform admin pages carry no inline styles, which the Content Security Policy blocks."""

import re

import pytest

from tests.tenants.test_admin import platform_client  # noqa: F401 (a fixture)

INLINE_STYLE = re.compile(r"<style\b|\sstyle=", re.IGNORECASE)


def _inline_styles(response):
    return INLINE_STYLE.findall(response.content.decode())


@pytest.mark.parametrize("path", ["/admin/", "/admin/units/unit/", "/admin/protocols/pollgroup/add/"])
def test_tenant_admin_has_no_inline_style(alpha_client, path):
    response = alpha_client.get(path)

    assert response.status_code == 200
    assert _inline_styles(response) == []
    assert "thermacore/admin-tenants.css" in response.content.decode()
    assert "style-src 'self'" in response["Content-Security-Policy"]


def test_tenant_admin_index_keeps_dashboard_and_app_colours(alpha_client):
    text = alpha_client.get("/admin/").content.decode()

    assert "admin/css/dashboard.css" in text
    assert 'class="tenant-app"' in text
    assert 'class="tenant-app-list"' in text


@pytest.mark.parametrize("path", ["/admin/", "/admin/tenants/tenant/"])
def test_platform_admin_has_no_inline_style(platform_client, path):
    response = platform_client.get(path)

    assert response.status_code == 200
    assert _inline_styles(response) == []
