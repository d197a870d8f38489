from . import roles


def capabilities(request):
    """Put the capability values of the user's role into templates as ``user_capabilities``."""
    user = getattr(request, "user", None)
    return {"user_capabilities": frozenset(str(capability) for capability in roles.capabilities_of(user))}
