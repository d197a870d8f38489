import django_filters
from rest_framework.exceptions import ValidationError

from .choices import ActorType, AuditAction, Outcome, SecurityTrigger
from .models import AuditEntry


class AuditEntryFilter(django_filters.FilterSet):
    """Filters shared by the entry list, the export and its manifest."""

    since = django_filters.IsoDateTimeFilter(
        field_name="time", lookup_expr="gte", help_text="Inclusive start, ISO 8601, e.g. 2026-01-05T10:00:00Z."
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="time", lookup_expr="lt", help_text="Exclusive end, ISO 8601, e.g. 2026-01-06T00:00:00Z."
    )
    actor_type = django_filters.ChoiceFilter(choices=ActorType.choices)
    actor_id = django_filters.CharFilter(help_text="User id, API key id, job or agent name.")
    actor_name = django_filters.CharFilter(help_text="User name, exact match.")
    action = django_filters.MultipleChoiceFilter(choices=AuditAction.choices, help_text="Repeat for several actions.")
    object_type = django_filters.CharFilter(help_text='"app_label.model", e.g. units.unit.')
    object_id = django_filters.CharFilter()
    outcome = django_filters.ChoiceFilter(choices=Outcome.choices)
    request_id = django_filters.CharFilter()
    # A label of its own, because django-filter cannot derive one from a JSON key and shows "[invalid name]".
    trigger = django_filters.ChoiceFilter(
        field_name="detail__trigger", choices=SecurityTrigger.choices, label="Security alarm trigger",
        help_text="Trigger of a security alarm.",
    )

    class Meta:
        model = AuditEntry
        fields = []


def reject_unknown_parameters(request, extra_parameters=()):
    """Raise ValidationError (400) for query parameters that are neither filters nor in extra_parameters.

    A mistyped filter would otherwise be ignored and silently widen a list or an export.
    """
    known = set(AuditEntryFilter.base_filters) | set(extra_parameters)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ValidationError(
            {name: [f"Unknown parameter; use one of {', '.join(sorted(known))}."] for name in unknown}
        )


def filtered_entries(request, *, extra_parameters=()):
    """Return (queryset, filters) for the request's query parameters, or raise ValidationError (400).

    `filters` contains the filter parameters that were given, as lists of strings.
    """
    reject_unknown_parameters(request, extra_parameters)
    filterset = AuditEntryFilter(request.query_params, queryset=AuditEntry.objects.all(), request=request)
    if not filterset.is_valid():
        raise ValidationError(filterset.errors)
    filters = {
        name: request.query_params.getlist(name)
        for name in sorted(AuditEntryFilter.base_filters)
        if request.query_params.get(name, "") != ""
    }
    return filterset.qs, filters
