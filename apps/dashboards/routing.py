from django.urls import path

from .consumers import LiveValuesConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveValuesConsumer.as_asgi()),
]
