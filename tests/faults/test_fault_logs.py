"""Every process logs on one clock, UTC: `gateway worker` too, whose Django
settings move the process's local time zone (TIME_ZONE sets TZ)."""

from __future__ import annotations

import datetime
import re
import uuid

import pytest
import yaml

from servers import PYTHON, REPO, Daemon

pytestmark = pytest.mark.e2e

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3} ", re.M)


#: The gateway's own handler (LOGGING leaves the root logger alone), or a project's formatter.
LOGGING = {
    "own": {"version": 1, "disable_existing_loggers": False},
    "project's": {"version": 1, "disable_existing_loggers": False,
                  "formatters": {"stamped": {"format": "%(asctime)s %(message)s"}},
                  "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "stamped"}},
                  "root": {"handlers": ["console"], "level": "INFO"}},
}


@pytest.mark.parametrize("handler", sorted(LOGGING))
def test_worker_with_a_far_time_zone_logs_utc(tmp_path, redis_server, handler):
    (tmp_path / "tokyo_settings.py").write_text("from demo.settings import *  # noqa: F401,F403\n"
                                                "TIME_ZONE = 'Asia/Tokyo'\n"
                                                f"LOGGING = {LOGGING[handler]!r}\n")
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_server.url, "prefix": f"t{uuid.uuid4().hex[:8]}"},
        "django": {"settings": "tokyo_settings", "path": [str(tmp_path), str(REPO / "example")]},
    }))
    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), "mqtt.echo"],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), "TZ": "UTC"})
    try:
        worker.wait_for_log("Running worker for channels", timeout=30)
    finally:
        assert worker.stop() == 0, worker.log()
    after = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    stamps = [datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in STAMP.findall(worker.log())]
    assert stamps, worker.log()
    # Tokyo is 9 hours off UTC: a line on local time would fall far outside this.
    assert all(before <= stamp <= after for stamp in stamps), (before, after, worker.log())
