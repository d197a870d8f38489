"""The audit page: search and filter entries, open their before/after values and start exports."""

from django.contrib.auth.decorators import login_required, permission_required
from django.db import connection
from django.http import FileResponse, Http404, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from .choices import ExportStatus
from .export_jobs import export_folder, jobs_of, start_export_job
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
        "filters": filters,
        "export_formats": ExportFormat.ALL,
    }
    template = "audit/partials/entry_table.html" if request.htmx else "audit/entry_list.html"
    return render(request, template, context)


def _with(query, **values):
    query = query.copy()
    for name, value in values.items():
        query[name] = str(value)
    return query.urlencode()


@login_required
@permission_required(READ_PERMISSION, raise_exception=True)
@require_POST
def start_export(request):
    """Queue a file export of the entries matching the posted filters and return its progress panel."""
    export_format = request.POST.get("format", "")
    if export_format not in ExportFormat.ALL:
        return HttpResponseBadRequest(f"Export format {export_format!r} is invalid; use csv or json.")
    filters = {
        name: request.POST.getlist(name) for name in sorted(AuditEntryFilter.base_filters)
        if request.POST.get(name, "") != ""
    }
    filterset = AuditEntryFilter(request.POST, queryset=AuditEntry.objects.none())
    if not filterset.is_valid():
        return HttpResponseBadRequest(f"Invalid filters: {filterset.errors.as_text()}")
    job = start_export_job(actor=request.user, export_format=export_format, filters=filters, request=request)
    return render(request, "audit/partials/export_job.html", {"job": job})


@login_required
@permission_required(READ_PERMISSION, raise_exception=True)
@require_GET
def export_status(request, pk):
    """Return the progress panel of the user's own export job; HTMX polls it until the job is done or failed."""
    job = get_object_or_404(jobs_of(request.user), pk=pk)
    return render(request, "audit/partials/export_job.html", {"job": job})


@login_required
@permission_required(READ_PERMISSION, raise_exception=True)
@require_GET
def export_download(request, pk, part):
    """Send the finished file (part "file") or its manifest (part "manifest") of the user's own export job."""
    job = get_object_or_404(jobs_of(request.user), pk=pk, status=ExportStatus.DONE)
    name = job.file_name if part == "file" else job.manifest_name
    path = export_folder(connection.schema_name) / name
    if not path.is_file():
        raise Http404(f"The file of export {job.pk} is no longer on the server; start the export again.")
    return FileResponse(open(path, "rb"), as_attachment=True, filename=name)
