from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    verbose_name = "Accounts"
    default = True

    def ready(self):
        # schema registers the OpenAPI description of API keys with drf-spectacular. sockets connects the
        # receivers that close the WebSockets of a credential that ended.
        from . import schema, sockets  # noqa: F401


class TenantAdminConfig(admin_apps.AdminConfig):
    """Django's admin app with the role-checked site as ``admin.site``."""

    default = False
    default_site = "apps.accounts.sites.TenantAdminSite"
