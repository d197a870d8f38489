from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "apps.audit"
    verbose_name = "Audit trail"

    def ready(self):
        from apps.accounts.roles import Capability, ModelPolicy, register_model_policy

        from . import signals  # noqa: F401  (connects the authentication receivers)

        # Monitoring thresholds and retention decide what the tenant learns and keeps, so they belong to admins.
        manage = Capability.MANAGE_USERS
        register_model_policy("audit.auditsettings", ModelPolicy(view=manage, add=manage, change=manage))
        register_model_policy("audit.credentialnetwork", ModelPolicy(view=manage))
