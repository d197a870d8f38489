"""Turning MQTT messages into samples for the points whose topic filters match.

A payload is a plain number (``21.5``), a JSON object (``{"supply": {"temp": 21.5}, "ts": 1767607200}``)
or a batch: a JSON array of numbers or objects, each becoming one sample. Values are
found with the point's JSONPath, source times with its timestamp path.
"""

import json
import math
from dataclasses import dataclass, field

from paho.mqtt.client import topic_matches_sub

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.sensors.timestamps import parse_timestamp

from .topics import compile_json_path


class PayloadError(ValueError):
    """A payload, or the part of it that a point refers to, cannot be read."""


@dataclass
class DecodedMessage:
    """Samples decoded from one message, and why points matching its topic got none."""

    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)


def decode_message(topic, payload, points, received_at):
    """Return the samples that ``payload`` on ``topic`` carries for ``points``.

    Points whose topic filter does not match are skipped. Each payload that is not UTF-8 or not
    JSON adds an error naming the reason, and so does each point whose value or timestamp
    cannot be read. The other points of the message still get their samples.
    """
    result = DecodedMessage()
    matching = [point for point in points if topic_matches_sub(point.topic, topic)]
    if not matching:
        return result
    try:
        document = parse_payload(payload)
    except PayloadError as exc:
        result.errors.append(str(exc))
        return result
    for point in matching:
        try:
            result.samples.extend(point_samples(point, document, received_at))
        except PayloadError as exc:
            result.errors.append(f"point {point.pk} (sensor {point.sensor_id}): {exc}")
    return result


def parse_payload(payload):
    """Return the payload as a JSON value; a plain number such as ``21.5`` is valid JSON too."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 text ({exc})") from exc
    text = text.strip()
    if not text:
        raise PayloadError("payload is empty")
    try:
        # json accepts NaN and Infinity, which point_samples turns into bad quality.
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload {_preview(text)} is neither a number nor JSON ({exc.msg} at {exc.pos})") from exc
    except RecursionError as exc:
        raise PayloadError(f"payload {_preview(text)} nests JSON arrays or objects too deeply to parse") from exc


def point_samples(point, document, received_at):
    """Return one sample per item of ``document`` (one item unless it is a JSON array)."""
    items = document if isinstance(document, list) else [document]
    if not items:
        raise PayloadError("batch payload is an empty JSON array")
    samples = []
    for index, item in enumerate(items):
        where = f"batch item {index}" if isinstance(document, list) else "payload"
        value = _find(point.json_path, item, where) if point.json_path else item
        if isinstance(value, (dict, list)):
            raise PayloadError(
                f"{where} holds a JSON {'object' if isinstance(value, dict) else 'array'} where a number was "
                "expected; set the point's JSON path to the value, e.g. '$.temp'"
            )
        time = received_at
        if point.timestamp_path:
            raw_time = _find(point.timestamp_path, item, where)
            try:
                time = parse_timestamp(raw_time)
            except ValueError as exc:
                raise PayloadError(f"{where}: {exc}") from exc
        samples.append(_sample(point, value, time, where))
    return samples


def _find(expression, item, where):
    matches = compile_json_path(expression).find(item)
    if not matches:
        raise PayloadError(f"JSON path {expression!r} matches nothing in {where}")
    if len(matches) > 1:
        raise PayloadError(f"JSON path {expression!r} matches {len(matches)} values in {where}; it must match one")
    return matches[0].value


def _sample(point, value, time, where):
    if value is None:
        return Sample(point.sensor_id, time, None, Quality.BAD)
    if isinstance(value, bool):
        number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise PayloadError(f"{where} value {_preview(value)} is not a number") from None
    else:
        raise PayloadError(f"{where} value {value!r} is not a number")
    if not math.isfinite(number):
        return Sample(point.sensor_id, time, None, Quality.BAD_NOT_A_NUMBER)
    return Sample(point.sensor_id, time, point.to_engineering(number), Quality.GOOD)


def _preview(text, limit=40):
    return repr(text if len(text) <= limit else text[:limit] + "…")
