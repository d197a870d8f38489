"""Registry of the code that receives readings after they are stored.

Alarm evaluation and live push register here from their own apps, so the
ingest pipeline imports none of them.
"""

import logging

logger = logging.getLogger(__name__)

_subscribers = []


def subscribe(callback):
    """Register ``callback(schema, samples, live_sensor_ids)`` to run after each committed ingest.

    ``samples`` holds only readings that were new to history, and
    ``live_sensor_ids`` the sensors whose latest value they replaced.
    """
    if callback not in _subscribers:
        _subscribers.append(callback)
    return callback


def unsubscribe(callback):
    if callback in _subscribers:
        _subscribers.remove(callback)


def dispatch(schema, samples, live_sensor_ids):
    for callback in list(_subscribers):
        try:
            callback(schema, samples, live_sensor_ids)
        except Exception:
            # One failing subscriber must not keep the others from their readings.
            logger.exception(
                "Reading subscriber %s failed for schema %s (%d samples)",
                getattr(callback, "__qualname__", callback), schema, len(samples),
            )
