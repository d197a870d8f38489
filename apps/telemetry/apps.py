from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "apps.telemetry"
    verbose_name = "Telemetry"

    def ready(self):
        from apps.accounts.roles import Capability, ModelPolicy, register_model_policy
        from apps.protocols.sinks import set_sample_queue, set_sample_sink

        from .ingest import ingest
        from .intake import enqueue

        # Protocol code hands its samples to the sink; storing them is this app's job.
        set_sample_sink(ingest)
        # Pollers may queue samples instead, for `manage.py run_ingest` to store (TELEMETRY_INTAKE_QUEUE).
        set_sample_queue(enqueue)
        # Import jobs show other users' file names and rejected readings, so only users who may import see them.
        register_model_policy("telemetry.csvimportjob", ModelPolicy(view=Capability.CONFIGURE_PLANT))
