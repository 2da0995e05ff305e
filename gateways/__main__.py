"""``python -m gateways`` is the ``gateway`` command."""

import sys

from gateways.core.cli import main

sys.exit(main())
