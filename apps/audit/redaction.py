"""Keep secrets out of the append-only audit trail.

`record` passes every entry's changes and detail through `redact`, so no
caller can store a password, token or key by mistake. Values under a
secret-like name become REDACTED. Inside strings, so do the values of
``name=value`` pairs and ``Name: value`` header lines, for example in
django-axes' ``post_data``, which keeps the CSRF token.
"""

import re

# Field values that never enter the audit trail; a change shows as this marker.
REDACTED = "[redacted]"

# A name is secret when one of its words is one of these.
SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "pwd", "token", "csrfmiddlewaretoken", "csrftoken", "secret", "otp",
    "authorization", "cookie", "sessionid",
})
# "key" alone names identifiers (Sensor.key, Alarm.key), so it is secret only after one of these words.
KEY_QUALIFIERS = frozenset({"private", "secret", "api", "hashed", "signing", "encryption", "access", "ssh", "totp"})
# Words that may follow the secret word and still name the secret itself, as in "admin_password_hash".
SECRET_SUFFIXES = frozenset({"hash", "hashed", "encrypted", "digest"})

# Fields that hold key material under a name that does not say so, by model label.
SECRET_MODEL_FIELDS = {
    "otp_totp.totpdevice": frozenset({"key"}),
    "otp_hotp.hotpdevice": frozenset({"key"}),
}

_WORD_BOUNDARY = re.compile(r"[^a-z0-9]+")
_CAMEL_CASE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# name=value in form data and query strings, and "Name: value" at the start of a header line.
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z0-9_.\-\[\]]+)(?P<separator>=)(?P<value>[^\s&;]*)")
_HEADER_LINE = re.compile(r"(?m)^(?P<name>[A-Za-z0-9_\-]+)(?P<separator>:[ \t]*)(?P<value>.*)$")


def _words(name):
    return [word for word in _WORD_BOUNDARY.split(_CAMEL_CASE.sub("_", name).lower()) if word]


def is_secret_name(name):
    """Return whether a field, parameter or header called ``name`` contains a secret."""
    words = _words(str(name))
    # Ignore trailing words that still name the secret ("password_hash", "secret_encrypted").
    while len(words) > 1 and words[-1] in SECRET_SUFFIXES:
        words.pop()
    if not words:
        return False
    last = words[-1]
    if last in SECRET_WORDS:
        return True
    if last in ("key", "keys"):
        return len(words) > 1 and words[-2] in KEY_QUALIFIERS
    return False


def is_secret_field(model_label, field_name):
    """Return whether a model field contains a secret, by its name or by SECRET_MODEL_FIELDS."""
    return is_secret_name(field_name) or field_name in SECRET_MODEL_FIELDS.get(model_label.lower(), ())


def _mask(value):
    # A [before, after] change keeps None, so a creation or deletion still shows as one.
    if isinstance(value, list):
        return [None if item is None else REDACTED for item in value]
    return None if value is None else REDACTED


def _redact_match(match):
    if not is_secret_name(match["name"]) or not match["value"]:
        return match[0]
    return f"{match['name']}{match['separator']}{REDACTED}"


def redact_text(text):
    """Return ``text`` with the values of secret ``name=value`` pairs and ``Name: value`` lines replaced."""
    return _HEADER_LINE.sub(_redact_match, _ASSIGNMENT.sub(_redact_match, text))


def redact(value):
    """Return a JSON value with every secret replaced by REDACTED, at any depth."""
    if isinstance(value, dict):
        return {key: _mask(item) if is_secret_name(key) else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
