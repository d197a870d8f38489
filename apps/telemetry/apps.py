from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "apps.telemetry"
    verbose_name = "Telemetry"

    def ready(self):
        from apps.protocols.sinks import set_sample_sink

        from .ingest import ingest

        # Protocol code hands its samples to the sink; storing them is this app's job.
        set_sample_sink(ingest)
