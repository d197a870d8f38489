"""Who may see and act on alarms, asked of the role layer so that the API, admin and HTMX pages agree.

Process alarms belong to the plant, so every role that views the plant can
see them. Security alarms come from the audit trail, so the roles that read the
audit log see them (Admin and Auditor), and only user managers (Admin) may
acknowledge or shelve them, because the response is a change to users,
tokens or keys.
"""

from apps.accounts.roles import (
    can_acknowledge_alarms,
    can_configure_plant,
    can_manage_users,
    can_shelve_alarms,
    can_view_audit_log,
    can_view_plant,
)

from .choices import AlarmSource

__all__ = [
    "can_acknowledge_alarm",
    "can_acknowledge_alarms",
    "can_configure_plant",
    "can_handle_alarm",
    "can_handle_alarms",
    "can_shelve_alarm",
    "can_shelve_alarms",
    "can_view_alarms",
    "visible_sources",
]


def visible_sources(user):
    """Return the frozenset of alarm sources whose alarms ``user`` may see."""
    sources = set()
    if can_view_plant(user):
        sources.add(AlarmSource.PROCESS)
    if can_view_audit_log(user):
        sources.add(AlarmSource.SECURITY)
    return frozenset(sources)


def can_view_alarms(user):
    """Return whether ``user`` may open the alarm list, the banner and the alarm API."""
    return bool(visible_sources(user))


def _may_act_on(user, alarm):
    if alarm.source == AlarmSource.SECURITY:
        return can_manage_users(user)
    return True


def can_acknowledge_alarm(user, alarm):
    return can_acknowledge_alarms(user) and alarm.source in visible_sources(user) and _may_act_on(user, alarm)


def can_shelve_alarm(user, alarm):
    return can_shelve_alarms(user) and alarm.source in visible_sources(user) and _may_act_on(user, alarm)


def can_handle_alarms(user):
    """Return whether ``user`` may acknowledge or shelve alarms, so the alarm list shows its action column."""
    return can_acknowledge_alarms(user) or can_shelve_alarms(user)


def can_handle_alarm(user, alarm):
    """Return whether ``user`` may acknowledge or shelve this alarm, so its row shows the action buttons."""
    return can_acknowledge_alarm(user, alarm) or can_shelve_alarm(user, alarm)
