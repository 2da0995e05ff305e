"""Django settings for the benchmark's runworker and mqttasgi processes."""

import os

from gateways.core.layer import channel_layers_setting

SECRET_KEY = "bench-only"
INSTALLED_APPS = ["channels"]
DATABASES = {}
USE_TZ = True
ASGI_APPLICATION = "bench.mqtt.apps.application"
CHANNEL_LAYERS = channel_layers_setting(os.environ["GATEWAY_CONFIG"])
LOGGING = {"version": 1, "disable_existing_loggers": False}
