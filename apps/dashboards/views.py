from django.contrib.auth.views import redirect_to_login
from django.db import connection
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from apps.accounts.decorators import capability_required
from apps.accounts.roles import Capability, capabilities_of, has_capability
from apps.alarms.permissions import can_view_alarms
from apps.sensors.models import Sensor
from apps.sensors.quality import is_bad, quality_label
from apps.telemetry.latest import get_latest
from apps.units.models import Site, Unit


def _with_latest(sensors):
    latest = get_latest(connection.schema_name, [sensor.id for sensor in sensors])
    for sensor in sensors:
        time, value, quality = latest.get(sensor.id, (None, None, None))
        sensor.latest_time = time
        sensor.latest_value = value
        sensor.latest_quality = quality
        sensor.latest_quality_label = quality_label(quality) if quality is not None else "No data"
        sensor.latest_bad = quality is not None and is_bad(quality)
    return sensors


def pages_for(user):
    """Return (title, URL) of the pages the user's role may open, the landing page first."""
    pages = []
    if has_capability(user, Capability.VIEW_PLANT):
        pages.append(("Live values", reverse("dashboards:live")))
    if has_capability(user, Capability.VIEW_AUDIT_LOG):
        pages.append(("Audit trail", reverse("audit:entries")))
    if can_view_alarms(user):
        pages.append(("Alarms", reverse("alarms:list")))
    if has_capability(user, Capability.CONFIGURE_PLANT) or has_capability(user, Capability.MANAGE_USERS):
        pages.append(("Configuration", reverse("admin:index")))
    if user.is_authenticated:
        pages.append(("API documentation", reverse("swagger-ui")))
    return pages


def live(request):
    """List every site and unit with the latest value of each sensor, kept live over a WebSocket.

    This is the page after login, so a role that may not view the plant (Auditor) is sent to its own first page.
    """
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not has_capability(request.user, Capability.VIEW_PLANT):
        # Every logged-in user may at least open the API documentation, so the list is never empty.
        return redirect(pages_for(request.user)[0][1])
    sites = list(
        Site.objects.prefetch_related(
            Prefetch("units", queryset=Unit.objects.prefetch_related("sensors"))
        )
    )
    _with_latest([sensor for site in sites for unit in site.units.all() for sensor in unit.sensors.all()])
    return render(request, "dashboards/live.html", {"sites": sites})


@capability_required(Capability.VIEW_PLANT)
def unit_detail(request, pk):
    """Show one unit's sensors with live values and a trend chart of the last hour."""
    unit = get_object_or_404(Unit.objects.select_related("site"), pk=pk)
    sensors = _with_latest(list(Sensor.objects.filter(unit=unit)))
    return render(request, "dashboards/unit_detail.html", {"unit": unit, "sensors": sensors})


def permission_denied(request, exception):
    """Render the 403 page: why the request was denied, what the user's role may do, and links to its pages."""
    user = request.user
    role = getattr(user, "role", "")
    context = {
        "reason": str(exception) if str(exception) else "Your role may not open this page.",
        "role_label": user.get_role_display() if role else "",
        "capabilities": [Capability(capability).label for capability in Capability if capability in
                         capabilities_of(user)],
        "pages": pages_for(user),
    }
    return render(request, "dashboards/403.html", context, status=403)
