import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")

# Django must be set up before the consumers and middlewares import models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter

from apps.accounts.asgi import TenantAuthMiddleware
from apps.dashboards.routing import websocket_urlpatterns
from apps.tenants.asgi import TenantWebSocketMiddleware

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": TenantWebSocketMiddleware(TenantAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
