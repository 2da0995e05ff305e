"""Django configured minimally for in-process worker tests (consumers need settings)."""

import django
from django.conf import settings

if not settings.configured:
    settings.configure(INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
    django.setup()
