"""The email bench's Django project: the demo's settings with an ack-only consumer."""

from demo.settings import *  # noqa: F401,F403

ASGI_APPLICATION = "bench_email.asgi.application"
