"""Checks of MQTT topic filters and of the JSONPath expressions that points use."""

from functools import lru_cache

from jsonpath_ng import parse as parse_json_path
from jsonpath_ng.exceptions import JSONPathError

# MQTT 3.1.1 section 4.7.3: topics are UTF-8 strings of at most 65535 bytes.
MAX_TOPIC_BYTES = 65535


def validate_topic_filter(topic):
    """Raise ValueError naming the fault when ``topic`` is not a valid MQTT subscription filter.

    '+' must fill a whole level, and '#' must fill the last level (MQTT 3.1.1 section 4.7.1).
    """
    if not topic:
        raise ValueError("Topic filter is empty; use e.g. 'plant/boiler1/temp'.")
    if "\x00" in topic:
        raise ValueError(f"Topic filter {topic!r} contains a NUL character; remove it.")
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise ValueError(f"Topic filter is longer than {MAX_TOPIC_BYTES} bytes; shorten it.")
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(
                f"Topic filter {topic!r} is invalid: '#' must be a whole level and the last one, as in 'plant/#'."
            )
        if "+" in level and level != "+":
            raise ValueError(f"Topic filter {topic!r} is invalid: '+' must be a whole level, as in 'plant/+/temp'.")


@lru_cache(maxsize=4096)
def compile_json_path(expression):
    """Return the parsed JSONPath of ``expression``; raise ValueError when it does not parse."""
    try:
        return parse_json_path(expression)
    except JSONPathError as exc:
        raise ValueError(f"JSONPath {expression!r} is invalid ({exc}); use e.g. '$.boiler.supply.temp'.") from exc


def validate_json_path(expression):
    compile_json_path(expression)
