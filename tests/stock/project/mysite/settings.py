"""Settings of a Channels project as the Channels tutorial writes it, for Daphne.

Nothing here knows about the gateways: the channel layer is channels_redis's,
on the Redis and key prefix the gateway YAML names too. The tests run it with
channels_redis's own class and with ``GatewayRedisChannelLayer`` (the same
layer with redis-py 8's idle-receive timeout fixed), via ``CHAT_LAYER_BACKEND``.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "stock-test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "good.example"]

# The tutorial lists "daphne" first too (for runserver); the gateways do not need it.
INSTALLED_APPS = [
    "chat",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHAT_DATABASE", str(BASE_DIR / "db.sqlite3")),
    }
}
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": os.environ.get("CHAT_LAYER_BACKEND", "channels_redis.core.RedisChannelLayer"),
        "CONFIG": {
            "hosts": [os.environ.get("CHAT_REDIS_URL", "redis://127.0.0.1:6379/0")],
            "prefix": os.environ.get("CHAT_LAYER_PREFIX", "asgi"),
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
