"""Paginators of the REST API that also reject query parameters a list endpoint does not read.

Every list endpoint paginates, so checking here covers them all: a mistyped
filter such as ``?since=`` for ``?start=`` would otherwise be ignored and
return a different list than the client asked for.
"""

import re

from django.utils.dateparse import parse_datetime
from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError

# Characters of the base64 that DRF's cursors are written in; a cursor is never empty.
CURSOR_TEXT = re.compile(r"[A-Za-z0-9+/=]+")
# DRF's URL_FORMAT_OVERRIDE, which picks the renderer (e.g. ?format=json).
RENDERER_FORMAT_PARAMETER = "format"


def declared_parameters(view):
    """Return the query parameters a view reads besides pagination: its filters and its ``query_parameters``.

    ``query_parameters`` is a tuple of names, or a dict from action name to such a tuple.
    """
    names = set()
    filterset_class = getattr(view, "filterset_class", None)
    if filterset_class is not None:
        names |= set(filterset_class.base_filters)
    names |= set(getattr(view, "filterset_fields", None) or ())
    declared = getattr(view, "query_parameters", ())
    if isinstance(declared, dict):
        declared = declared.get(getattr(view, "action", None), ())
    return names | set(declared)


class StrictQueryMixin:
    """Raise ValidationError (400) naming every unknown query parameter, and an invalid page size or page."""

    def pagination_parameters(self):
        names = {self.page_size_query_param}
        for attribute in ("page_query_param", "cursor_query_param"):
            if hasattr(self, attribute):
                names.add(getattr(self, attribute))
        return names

    def check_query_parameters(self, request, view):
        known = self.pagination_parameters() | declared_parameters(view) | {RENDERER_FORMAT_PARAMETER}
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise ValidationError(
                {name: [f"Unknown parameter; this endpoint reads {', '.join(sorted(known))}."] for name in unknown}
            )

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        # A size above the maximum is rejected, not cut to it as DRF does, so a client never gets fewer rows than it asked for.
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [(f"{raw[:32]!r} is not a page size; give a whole number from 1 to "
                                               f"{self.max_page_size}.")]}
            )
        return size


class PageNumberPagination(StrictQueryMixin, pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset, request, view=None):
        self.check_query_parameters(request, view)
        raw_page = request.query_params.get(self.page_query_param)
        if raw_page is not None and raw_page != "last" and not raw_page.isdigit():
            raise ValidationError(
                {self.page_query_param: [f"{raw_page[:32]!r} is not a page number; give a whole number from 1."]}
            )
        return super().paginate_queryset(queryset, request, view)


class ReadingCursorPagination(StrictQueryMixin, pagination.CursorPagination):
    """Pages through readings by time, so a deep page costs no more than the first."""

    ordering = "time"
    page_size = 1000
    page_size_query_param = "page_size"
    max_page_size = 10000

    def paginate_queryset(self, queryset, request, view=None):
        self.check_query_parameters(request, view)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        invalid = ValidationError(
            {self.cursor_query_param: ["Invalid cursor; use the next or previous link of an earlier page."]}
        )
        raw = request.query_params.get(self.cursor_query_param)
        # DRF's base64 decoding skips characters outside the alphabet, so "%00" would decode to the first page.
        if raw is not None and not CURSOR_TEXT.fullmatch(raw):
            raise invalid
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise invalid from None
        if cursor is not None and cursor.position is not None:
            try:
                valid = parse_datetime(cursor.position) is not None
            except ValueError:
                valid = False
            if not valid:
                raise invalid
        return cursor
