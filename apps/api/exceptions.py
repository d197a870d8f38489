"""DRF exception handler that turns Django's own errors into JSON 4xx responses naming the cause."""

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

from apps.audit.denials import exception_handler as audited_exception_handler

# Maximum number of blocking objects a 409 response names; the rest are counted.
MAX_NAMED_BLOCKERS = 5


def exception_handler(exc, context):
    if isinstance(exc, (ProtectedError, RestrictedError)):
        return Response({"detail": _blocked_delete_message(exc, context)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "Request body is too large; send it in smaller batches."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, DjangoValidationError):
        return Response(as_serializer_error(exc), status=status.HTTP_400_BAD_REQUEST)
    # DRF's own handling, plus an audit entry for each permission denial.
    return audited_exception_handler(exc, context)


def _blocked_delete_message(exc, context):
    blockers = list(getattr(exc, "protected_objects", None) or getattr(exc, "restricted_objects", None) or [])
    view = context.get("view")
    target = view.get_object() if view is not None and hasattr(view, "get_object") else None
    by_model = {}
    for blocker in blockers:
        by_model.setdefault(blocker._meta.verbose_name_plural, []).append(blocker)
    parts = []
    for model_name, objects in by_model.items():
        names = ", ".join(f"{obj.pk} ({obj})" for obj in objects[:MAX_NAMED_BLOCKERS])
        more = f" and {len(objects) - MAX_NAMED_BLOCKERS} more" if len(objects) > MAX_NAMED_BLOCKERS else ""
        parts.append(f"{model_name} {names}{more}")
    subject = f"{target._meta.verbose_name} {target.pk}" if target is not None else "This object"
    return f"{subject} is still referenced by {'; '.join(parts)}; delete or reassign them first."
