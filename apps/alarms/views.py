"""HTMX pages of the alarm list: one view serves the page and its table partial."""

import logging
from datetime import timedelta
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from .choices import AlarmSource, AlarmState, Priority
from .kpis import compute_kpis
from .models import Alarm
from .permissions import (
    can_acknowledge_alarm,
    can_acknowledge_alarms,
    can_handle_alarm,
    can_handle_alarms,
    can_shelve_alarm,
    can_shelve_alarms,
    can_view_alarms,
    visible_sources,
)
from .services import MAX_SHELVE_DURATION, AlarmActionError, acknowledge_alarm, shelve_alarm, unshelve_alarm

logger = logging.getLogger(__name__)

# Views of the alarm list an operator can switch between.
LIST_VIEWS = {
    "annunciated": ("Alarm list", lambda alarms: alarms.annunciated()),
    "shelved": ("Shelved", lambda alarms: alarms.filter(state=AlarmState.SHELVED)),
    "suppressed": (
        "Suppressed and out of service",
        lambda alarms: alarms.filter(state__in=[AlarmState.SUPPRESSED, AlarmState.OUT_OF_SERVICE]),
    ),
    "history": ("History", lambda alarms: alarms.all()),
}
HISTORY_LIMIT = 200
PRIORITY_ORDER = {priority: rank for rank, priority in enumerate(reversed(Priority.values))}
SHELVE_MINUTES = (15, 60, 240, 480)
KPI_PANEL_WINDOW = timedelta(hours=24)


def view_alarms_required(view_func):
    """Allow users whose role may view process or security alarms, and raise PermissionDenied (403) for others."""

    def wrapped(request, *args, **kwargs):
        if not can_view_alarms(request.user):
            raise PermissionDenied("Your role may not view alarms; ask an administrator.")
        return view_func(request, *args, **kwargs)

    return login_required(wraps(view_func)(wrapped))


def visible_alarms(user):
    """Return the alarms of the sources ``user`` may see, with what the alarm rows show."""
    alarms = Alarm.objects.select_related("unit__site", "rule__sensor", "acknowledged_by", "shelved_by")
    return alarms.of_sources(visible_sources(user))


@view_alarms_required
@require_GET
def alarm_list(request):
    """Show the alarms of one list view, most urgent first; HTMX requests get only the table."""
    view = request.GET.get("view", "annunciated")
    if view not in LIST_VIEWS:
        return HttpResponseBadRequest(f"Unknown alarm view {view!r}; use one of {', '.join(LIST_VIEWS)}.")
    title, select = LIST_VIEWS[view]
    alarms = list(select(visible_alarms(request.user))[:HISTORY_LIMIT])
    if view != "history":
        alarms.sort(key=lambda alarm: (PRIORITY_ORDER[alarm.priority], -alarm.activated_at.timestamp()))
    for alarm in alarms:
        alarm.user_may_act = can_handle_alarm(request.user, alarm)
    context = {
        "alarms": alarms,
        "view": view,
        "title": title,
        "views": {name: label for name, (label, _select) in LIST_VIEWS.items()},
        "can_handle": can_handle_alarms(request.user),
        "shelve_minutes": SHELVE_MINUTES,
    }
    if request.htmx:
        return render(request, "alarms/partials/alarm_table.html", context)
    # The KPIs measure the load of plant operators, so they cover process alarms only.
    if AlarmSource.PROCESS in visible_sources(request.user):
        end = timezone.now()
        context["kpis"] = compute_kpis(end - KPI_PANEL_WINDOW, end)
    return render(request, "alarms/alarm_list.html", context)


@view_alarms_required
@require_GET
def banner(request):
    """Render the count of alarms waiting for an acknowledgement, by priority, and tell the page to refresh lists."""
    counts = dict(
        Alarm.objects.of_sources(visible_sources(request.user))
        .unacknowledged()
        .values_list("priority")
        .annotate(count=Count("pk"))
        .values_list("priority", "count")
    )
    by_priority = [(priority, label, counts.get(priority, 0)) for priority, label in reversed(Priority.choices)]
    response = render(
        request, "alarms/partials/banner.html", {"by_priority": by_priority, "total": sum(counts.values())}
    )
    response["HX-Trigger"] = "alarmsChanged"
    return response


@login_required
@require_POST
def acknowledge(request, pk):
    return _act(
        request,
        pk,
        lambda alarm: acknowledge_alarm(alarm, actor=request.user, comment=request.POST.get("comment", "")),
        allowed=can_acknowledge_alarms(request.user),
        allowed_on=can_acknowledge_alarm,
    )


@login_required
@require_POST
def shelve(request, pk):
    try:
        minutes = int(request.POST.get("minutes", ""))
    except ValueError:
        return HttpResponseBadRequest(
            f"Shelve duration {request.POST.get('minutes')!r} is not a whole number of minutes."
        )
    max_minutes = int(MAX_SHELVE_DURATION.total_seconds() // 60)
    if not 1 <= minutes <= max_minutes:
        return HttpResponseBadRequest(f"Shelve duration {minutes} min is invalid; choose 1 to {max_minutes} minutes.")
    until = timezone.now() + timedelta(minutes=minutes)
    return _act(
        request,
        pk,
        lambda alarm: shelve_alarm(alarm, actor=request.user, until=until, comment=request.POST.get("comment", "")),
        allowed=can_shelve_alarms(request.user),
        allowed_on=can_shelve_alarm,
    )


@login_required
@require_POST
def unshelve(request, pk):
    return _act(
        request,
        pk,
        lambda alarm: unshelve_alarm(alarm, actor=request.user, comment=request.POST.get("comment", "")),
        allowed=can_shelve_alarms(request.user),
        allowed_on=can_shelve_alarm,
    )


def _act(request, pk, perform, *, allowed, allowed_on):
    """Run one operator action and return the alarm's new table row to an HTMX request."""
    if not allowed:
        raise PermissionDenied("Your role may not acknowledge or shelve alarms.")
    alarm = get_object_or_404(visible_alarms(request.user), pk=pk)
    if not allowed_on(request.user, alarm):
        raise PermissionDenied(f"Your role may not act on {alarm.get_source_display().lower()} alarm {pk}.")
    error = None
    try:
        perform(alarm)
    except AlarmActionError as exc:
        logger.info("Alarm action on alarm %s by user %s rejected: %s", pk, request.user.pk, exc)
        error = str(exc)
    if not request.htmx:
        return redirect("alarms:list")
    alarm = visible_alarms(request.user).get(pk=pk)
    alarm.user_may_act = can_handle_alarm(request.user, alarm)
    context = {"alarm": alarm, "error": error, "can_handle": True, "shelve_minutes": SHELVE_MINUTES}
    return render(request, "alarms/partials/alarm_row.html", context)
