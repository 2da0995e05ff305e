"""The demo settings plus the fault suite's recording consumers."""

from demo.settings import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "faultapp"]  # noqa: F405
ASGI_APPLICATION = "faultapp.asgi.application"
