"""The audit page: search and filter entries, open their before/after values and start exports."""

from django.contrib.auth.decorators import login_required, permission_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .exports import ExportFormat
from .filters import AuditEntryFilter
from .models import AuditEntry
from .permissions import READ_PERMISSION
from .views import export_query, head_sequence

PAGE_SIZE = 50


@login_required
@permission_required(READ_PERMISSION, raise_exception=True)
@require_GET
def entry_list(request):
    """Render the filtered entries newest first, PAGE_SIZE at a time; HTMX requests get the table alone."""
    query = request.GET.copy()
    before = query.pop("before", [""])[-1]
    filterset = AuditEntryFilter(query, queryset=AuditEntry.objects.all(), request=request)
    entries, older, problems = [], None, {}
    if before and not before.isdigit():
        problems["before"] = [f"{before!r} is not an entry sequence; use the Older entries link."]
    elif filterset.is_valid():
        queryset = filterset.qs.order_by("-sequence")
        if before.isdigit():
            queryset = queryset.filter(sequence__lt=int(before))
        entries = list(queryset[: PAGE_SIZE + 1])
        if len(entries) > PAGE_SIZE:
            entries = entries[:PAGE_SIZE]
            older = entries[-1].sequence
    else:
        problems = filterset.errors

    # Links pin the export to the current head, so the file and its manifest cover the same entries.
    filters = {name: query.getlist(name) for name in AuditEntryFilter.base_filters if query.get(name, "") != ""}
    head = head_sequence()
    context = {
        "form": filterset.form,
        "entries": entries,
        "older_query": _with(query, before=older) if older else None,
        "problems": problems,
        "exports": [
            (export_format, export_query(export_format, filters, head)) for export_format in ExportFormat.ALL
        ],
        "head": head,
    }
    template = "audit/partials/entry_table.html" if request.htmx else "audit/entry_list.html"
    return render(request, template, context)


def _with(query, **values):
    query = query.copy()
    for name, value in values.items():
        query[name] = str(value)
    return query.urlencode()
