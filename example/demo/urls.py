"""HTTP views of the demo project (the gateways' traffic arrives through channels)."""

from django.http import HttpResponse
from django.urls import path


def index(request):
    return HttpResponse("demo project: its consumers answer WebSocket, email, MQTT and Slack traffic\n")


urlpatterns = [path("", index)]
