"""The sample sink: the function that stores what drivers, the poller and the gateway read.

The telemetry app registers its ingest function here when Django starts, so
protocol code stores samples without importing the storage layer.
"""

from django.core.exceptions import ImproperlyConfigured

_sink = None


def set_sample_sink(callback):
    """Register ``callback(schema, samples)``, which stores samples and returns an object with ``accepted`` and ``rejected``."""
    global _sink
    _sink = callback


def deliver_samples(schema, samples):
    if _sink is None:
        raise ImproperlyConfigured(
            "No sample sink is registered; add 'apps.telemetry' to INSTALLED_APPS so its ingest receives samples."
        )
    return _sink(schema, samples)
