from django.apps import AppConfig


class AlarmsConfig(AppConfig):
    name = "apps.alarms"
    verbose_name = "Alarms"

    def ready(self):
        from apps.accounts.roles import Capability, ModelPolicy, register_model_policy
        from apps.audit.monitoring import security_alarm_raised
        from apps.telemetry import subscribers

        from .evaluator import evaluate_readings
        from .security import on_security_alarm

        subscribers.subscribe(evaluate_readings)
        security_alarm_raised.connect(on_security_alarm, dispatch_uid="alarms_security_alarm")
        # Targets hold contact addresses and delivery logs their outcome: plant configurators only.
        configure = Capability.CONFIGURE_PLANT
        register_model_policy(
            "alarms.notificationtarget", ModelPolicy(view=configure, add=configure, change=configure, delete=configure)
        )
        register_model_policy("alarms.notificationdelivery", ModelPolicy(view=configure))
