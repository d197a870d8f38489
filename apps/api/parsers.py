"""JSON request parser that turns too deep nesting into 400 Bad Request instead of a RecursionError."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# No API body needs more levels; readings are two deep ({"readings": [{...}]}), profiles a few more.
MAX_JSON_DEPTH = 64


def json_depth(document):
    """Return the nesting depth of a parsed JSON document (a scalar is 0), walking without recursion."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        value, level = pending.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            break
        pending.extend((child, level + 1) for child in children)
    return deepest


class DepthLimitedJSONParser(JSONParser):
    """DRF's JSON parser, plus a ParseError (400) for bodies nested deeper than MAX_JSON_DEPTH.

    Python's json module raises RecursionError at about 1,000 levels, and a document
    just under that would still overflow the stack later, when it is rendered or copied.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(
                f"JSON parse error - the body is nested too deeply; send at most {MAX_JSON_DEPTH} levels "
                "of arrays and objects."
            ) from None
        if json_depth(document) > MAX_JSON_DEPTH:
            raise ParseError(
                f"JSON parse error - the body is nested more than {MAX_JSON_DEPTH} levels deep; "
                "send at most that many levels of arrays and objects."
            )
        return document
