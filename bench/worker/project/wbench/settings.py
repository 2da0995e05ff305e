"""Settings of the worker benchmark's project: the layer comes from the bench YAML."""

import os

from gateways.core.layer import channel_layers_setting

SECRET_KEY = "bench-only"
INSTALLED_APPS = ["channels", "wbench"]
DATABASES = {}
USE_TZ = True
ASGI_APPLICATION = "wbench.asgi.application"
CHANNEL_LAYERS = channel_layers_setting(os.environ["GATEWAY_CONFIG"])
