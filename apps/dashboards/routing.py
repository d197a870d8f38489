from django.urls import path, re_path

from .consumers import LiveValuesConsumer, NotFoundConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveValuesConsumer.as_asgi()),
    re_path(r"", NotFoundConsumer.as_asgi()),
]
