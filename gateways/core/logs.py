"""Logging set-up: human-readable lines by default, JSON objects with a flag."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with any ``extra=`` fields included."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._standard:
                data[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


class UtcFormatter(logging.Formatter):
    """A text formatter whose ``%(asctime)s`` is UTC, whatever the local time zone."""

    converter = time.gmtime


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the root logger for a daemon (stderr); every timestamp in UTC.

    Also makes UTC the clock of every other formatter of the process: Django
    sets the process's time zone from ``TIME_ZONE`` (``TZ``), so formatters a
    project's ``LOGGING`` adds to ``gateway worker`` would otherwise stamp
    local time while the gateways stamp UTC, and logs of one stack could not
    be read side by side.
    """
    logging.Formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(UtcFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("websockets", "asyncio", "mail.log", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
