"""Who may act on alarms, asked of the role layer so that the API, admin and HTMX pages agree."""

from apps.accounts.roles import can_acknowledge_alarms, can_configure_plant, can_shelve_alarms

__all__ = ["can_acknowledge_alarms", "can_configure_plant", "can_handle_alarms", "can_shelve_alarms"]


def can_handle_alarms(user):
    """Return whether ``user`` may acknowledge or shelve alarms, so the alarm list shows its action buttons."""
    return can_acknowledge_alarms(user) or can_shelve_alarms(user)
