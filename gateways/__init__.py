"""Multi-protocol gateway daemons for Django Channels."""

__version__ = "0.1.0"
