"""Enumerate the routes of a URL configuration, so matrices of expected access cover every route."""

from dataclasses import dataclass

from django.urls import URLPattern, URLResolver

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
HTTP_METHODS = ("GET", *WRITE_METHODS)


@dataclass(frozen=True)
class Route:
    """One URL pattern: its full pattern text, its name and the view behind it."""

    pattern: str
    name: str
    callback: object

    @property
    def methods(self):
        """Return the HTTP methods the view serves, for DRF views and viewsets; GET for plain views."""
        actions = getattr(self.callback, "actions", None)
        if actions:
            return tuple(method for method in HTTP_METHODS if method.lower() in actions)
        view_class = getattr(self.callback, "cls", None) or getattr(self.callback, "view_class", None)
        if view_class is not None:
            served = getattr(view_class, "http_method_names", [method.lower() for method in HTTP_METHODS])
            return tuple(
                method for method in HTTP_METHODS if method.lower() in served and hasattr(view_class, method.lower())
            )
        return ("GET",)


def iter_routes(patterns, prefix="", namespace=""):
    """Yield a Route for every URL pattern below ``patterns``, following includes."""
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner_namespace = namespace
            if entry.namespace:
                inner_namespace = f"{namespace}{entry.namespace}:"
            yield from iter_routes(entry.url_patterns, prefix + str(entry.pattern), inner_namespace)
        elif isinstance(entry, URLPattern):
            name = f"{namespace}{entry.name}" if entry.name else ""
            yield Route(pattern=prefix + str(entry.pattern), name=name, callback=entry.callback)


def is_format_suffix_variant(route):
    """Return whether the route is DRF's ``.json``-style duplicate of another route."""
    return "(?P<format>" in route.pattern or "<drf_format_suffix" in route.pattern
