"""The sample sink and queue: the functions that take what drivers, the poller and the gateway read.

The telemetry app registers its ingest function and its intake queue here
when Django starts, so protocol code stores samples without importing the
storage layer.
"""

from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.sensors.samples import expand_samples

_sink = None
_queue = None


@dataclass(frozen=True)
class QueuedSamples:
    """The outcome of a hand-off to the intake queue, shaped like ingest's result.

    ``accepted`` counts the samples taken. Ingest validates them later in the
    ingest process, which logs its rejections, so ``rejected`` is always empty.
    """

    accepted: int
    rejected: list = field(default_factory=list)
    spooled: int = 0
    duplicates: int = 0


def set_sample_sink(callback):
    """Register ``callback(schema, samples)``, which stores samples and returns an object with ``accepted`` and ``rejected``."""
    global _sink
    _sink = callback


def set_sample_queue(callback):
    """Register ``callback(schema, samples)``, which queues samples for a separate ingest process and returns their count."""
    global _queue
    _queue = callback


def deliver_samples(schema, samples):
    if _sink is None:
        raise ImproperlyConfigured(
            "No sample sink is registered; add 'apps.telemetry' to INSTALLED_APPS so its ingest receives samples."
        )
    return _sink(schema, samples)


def hand_off_samples(schema, samples):
    """Queue ``samples`` (Samples and SampleRuns) for the ingest process when TELEMETRY_INTAKE_QUEUE is on, else store them now.

    Returns a QueuedSamples when queued, else the sink's result. Both have
    ``accepted`` and ``rejected``.
    """
    if _queue is None or not settings.TELEMETRY_INTAKE_QUEUE:
        return deliver_samples(schema, expand_samples(samples))
    return QueuedSamples(accepted=_queue(schema, samples))
