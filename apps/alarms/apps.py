from django.apps import AppConfig


class AlarmsConfig(AppConfig):
    name = "apps.alarms"
    verbose_name = "Alarms"

    def ready(self):
        from apps.telemetry import subscribers

        from .evaluator import evaluate_readings

        subscribers.subscribe(evaluate_readings)
