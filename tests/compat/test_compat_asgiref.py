"""consumers/testing/compat_asgiref.py still tells whether a communicator started its application."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from asgiref.testing import ApplicationCommunicator

from consumers.testing.compat_asgiref import started_application

UPGRADED = (f"consumers/testing/compat_asgiref.py was checked against asgiref 3.13; the installed "
            f"{version('asgiref')} changed what it relies on")


async def test_none_until_started_then_the_running_application():
    async def application(scope, receive, send):
        await receive()

    communicator = ApplicationCommunicator(application, {"type": "channel"})
    try:
        assert started_application(communicator) is None, f"{UPGRADED}: _future is set before the start"
    except AttributeError as exc:
        raise AssertionError(f"{UPGRADED}: {exc}") from exc
    future = communicator.future
    assert started_application(communicator) is future, f"{UPGRADED}: _future is not the application's task"
    assert isinstance(future, asyncio.Future)
    communicator.stop()
    await asyncio.gather(future, return_exceptions=True)
