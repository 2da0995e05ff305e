"""Settings of the demo project: its channel layer comes from the gateway YAML."""

import os
from pathlib import Path

from gateways.core.layer import channel_layers_setting

BASE_DIR = Path(__file__).resolve().parent.parent
REPO = BASE_DIR.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "consumers",  # system checks of GATEWAY_CONFIG, the gateway email backend
    "demo",
]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = "demo.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE", str(REPO / "var" / "demo.sqlite3")),
    }
}
USE_TZ = True
ASGI_APPLICATION = "demo.asgi.application"

# One YAML file configures the gateways and this project's layer alike.
GATEWAY_CONFIG = os.environ.get("GATEWAY_CONFIG", str(REPO / "config" / "demo.yaml"))
CHANNEL_LAYERS = channel_layers_setting(GATEWAY_CONFIG)

# Django's own mail (send_mail, mail_admins, `manage.py sendtestemail`) goes out
# through the email gateway, from an address of its domain.
EMAIL_BACKEND = "consumers.mail.GatewayEmailBackend"
DEFAULT_FROM_EMAIL = SERVER_EMAIL = "demo@demo.local"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
