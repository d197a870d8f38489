def can_handle_alarms(user):
    """Return whether ``user`` may acknowledge, shelve and unshelve alarms."""
    # TODO: ask the role layer's acknowledge and shelve capabilities once the roles in apps.accounts land.
    return bool(user and user.is_authenticated and user.has_perm("alarms.change_alarm"))
