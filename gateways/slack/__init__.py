"""The Slack gateway: Socket Mode and the Events API in, Web API calls out.

``protocol`` translates (no I/O); ``webapi``, ``socket_mode``, ``events_http``
and ``dedup`` do the I/O; ``daemon`` ties them to the core.
"""
