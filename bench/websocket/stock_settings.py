"""Settings of the stock-consumer benchmark's project: what a Daphne project has.

The layer is channels_redis's, through ``GatewayRedisChannelLayer`` (the same
class with redis-py 8's socket timeout trap closed: stock channels_redis 4.3
on redis-py 8 fails an idle receive after 5 s, under Daphne too).
``BENCH_LAYER=batched`` uses the gateway's batched layer instead.
"""

import os

SECRET_KEY = "bench"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "bench.websocket.stock_app.application"
USE_TZ = True

CHANNEL_LAYERS = {"default": {
    "BACKEND": ("gateways.core.batched.BatchedRedisChannelLayer" if os.environ.get("BENCH_LAYER") == "batched"
                else "gateways.core.layer.GatewayRedisChannelLayer"),
    "CONFIG": {"hosts": [os.environ["BENCH_REDIS_URL"]], "prefix": os.environ["BENCH_PREFIX"]},
}}
