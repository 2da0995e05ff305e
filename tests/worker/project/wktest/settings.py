"""The demo settings plus the worker tests' consumers."""

from demo.settings import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "wktest"]  # noqa: F405
ASGI_APPLICATION = "wktest.asgi.application"
