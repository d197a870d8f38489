from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "apps.tenants"
    verbose_name = "Tenants"

    def ready(self):
        from . import backup_tasks, quotas  # noqa: F401 (backup_tasks registers its Celery task)

        quotas.connect_receivers()
