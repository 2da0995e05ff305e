"""The demo settings plus consumers that exercise the WebSocket gateway's edges."""

from demo.settings import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "wstest"]  # noqa: F405
ASGI_APPLICATION = "wstest.asgi.application"
