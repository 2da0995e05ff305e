"""Slack bench: the gateway + its worker vs a Slack Bolt AsyncApp, same stand-in, same run.

``python -m bench.slack [--events N] [--paced N] [--rate R] [--channels C]``

Both sides run the demo's echo (``echo <text>`` -> ``chat.postMessage`` with
``<text>`` in the same channel) against the Slack stand-in of tests/slack,
over Socket Mode. For each it prints:

- burst: N envelopes sent at once, spread over C channels; events/s from the
  first envelope sent to the last chat.postMessage received; p50/p99 of
  envelope sent -> its chat.postMessage at the stand-in; p99 of envelope
  sent -> its ack;
- acks/s: envelopes acknowledged per second in the burst (for the gateway:
  handed to the layer, the rate its worker does not limit);
- paced: N envelopes at R/s (below both sides' capacity): p50/p99 latency and
  ack p99 without queueing;

then the ratios gateway/Bolt. The gateway side is `gateway slack` plus one
worker process on a private redis-server, measured twice: first with
`gateway worker` (concurrent lanes, one per Slack channel; what `gateway up`
runs, so the gateway's figure), then with Django's stock `runworker` as a
secondary row; Bolt is one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.common import PYTHON, REPO, percentile, redis_server, start, stop

_spec = importlib.util.spec_from_file_location("slack_standin", REPO / "tests" / "slack" / "standin.py")
standin_module = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["slack_standin"] = standin_module
_spec.loader.exec_module(standin_module)  # type: ignore[union-attr]
SlackStandIn = standin_module.SlackStandIn
event_callback = standin_module.event_callback
message_event = standin_module.message_event


def run_load(standin, label: str, count: int, channels: list[str], rate: float | None) -> dict:
    """Send ``count`` echo envelopes (all at once, or at ``rate``/s) and measure."""
    tag = uuid.uuid4().hex[:6]
    envelopes: dict[str, str] = {}  # text -> envelope id
    before = len(standin.calls)
    started = time.perf_counter()
    for i in range(count):
        text = f"{label}-{tag}-{i}"
        body = event_callback(message_event(channels[i % len(channels)], f"echo {text}"))
        envelopes[text] = standin.send_envelope("events_api", body)
        if rate:
            next_at = started + (i + 1) / rate
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def posted() -> dict[str, float]:
        return {c.params.get("text"): c.at for c in standin.calls[before:]
                if c.method == "chat.postMessage" and c.status == 200 and c.params.get("text") in envelopes}

    standin.wait_for(lambda: len(posted()) >= count and all(e in standin.acks for e in envelopes.values()),
                     timeout=300, what=f"{count} echoes ({label})")
    posts = posted()
    latencies = [posts[text] - standin.sent[env] for text, env in envelopes.items()]
    acks = [standin.acks[env].at - standin.sent[env] for env in envelopes.values()]
    first = min(standin.sent[env] for env in envelopes.values())
    return {
        "rate": count / (max(posts.values()) - first),
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "ack_p99": percentile(acks, 99) * 1000,
        "ack_rate": count / (max(standin.acks[env].at for env in envelopes.values()) - first),
    }


def gateway_side(standin, workdir: Path, worker_kind: str = "runworker"):
    """Start redis, `gateway slack` and a worker (stock ``runworker`` or
    ``gateway worker``); return the processes."""
    redis, url = redis_server()
    config = workdir / "slack-bench.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": url, "prefix": "bench"},
        "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
        "log": {"level": "WARNING"},
        "slack": {"app_token": standin.app_token, "bot_token": standin.bot_token, "api_url": standin.api_url,
                  "default_channel": "slack.receive"},
    }))
    gateway = start([PYTHON, "-m", "gateways", "slack", "--config", str(config)])
    if worker_kind == "runworker":
        argv = [PYTHON, "-m", "django", "runworker", "slack.receive"]
    else:
        argv = [PYTHON, "-m", "gateways", "worker", "--config", str(config), "slack.receive"]
    worker = start(argv, env={
        "DJANGO_SETTINGS_MODULE": "demo.settings", "GATEWAY_CONFIG": str(config),
        "DEMO_DATABASE": str(workdir / "db.sqlite3"), "PYTHONPATH": str(REPO / "example"),
    })
    return [gateway, worker, redis]


def gateway_worker_side(standin, workdir: Path):
    """The gateway with `gateway worker` (concurrent lanes) instead of runworker."""
    return gateway_side(standin, workdir, "gateway")


def bolt_side(standin, workdir: Path):
    """Start the Bolt app; return its process."""
    return [start([PYTHON, str(Path(__file__).with_name("bolt_echo.py")), standin.api_url, standin.app_token,
                   standin.bot_token])]


def measure(name: str, starter, args: argparse.Namespace) -> dict:
    standin = SlackStandIn().start()
    procs = starter(standin, Path(tempfile.mkdtemp(prefix="slack-bench-")))
    try:
        standin.wait_connections(1, timeout=60)
        channels = [f"C{name.upper()[:3]}{i:04d}" for i in range(args.channels)]
        run_load(standin, "warmup", 50, channels, None)
        burst = run_load(standin, "burst", args.events, channels, None)
        paced = run_load(standin, "paced", args.paced, channels, args.rate)
        return {"burst": burst, "paced": paced}
    finally:
        for proc in procs:
            stop(proc)
        standin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slack")
    parser.add_argument("--events", type=int, default=1000, help="envelopes in the burst")
    parser.add_argument("--paced", type=int, default=1000, help="envelopes in the paced run")
    parser.add_argument("--rate", type=float, default=200.0, help="envelopes per second in the paced run")
    parser.add_argument("--channels", type=int, default=20, help="Slack channels the load is spread over")
    args = parser.parse_args()
    # `gateway worker` (what `gateway up` runs) is the gateway's figure; stock
    # runworker is the secondary row.
    results = {"gateway-worker": measure("gww", gateway_worker_side, args),
               "gateway": measure("gw", gateway_side, args),
               "bolt": measure("bolt", bolt_side, args)}
    labels = {"gateway-worker": "gateway + gateway worker", "gateway": "gateway + runworker",
              "bolt": "Bolt AsyncApp"}
    print(f"\nSlack echo over Socket Mode, envelope -> chat.postMessage at the stand-in "
          f"(burst {args.events}, paced {args.paced} at {args.rate:g}/s, {args.channels} channels)")
    print(f"  {'':38} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'acks/s':>8} {'ack p99 ms':>11}")
    for side in results:
        for phase in ("burst", "paced"):
            r = results[side][phase]
            label = f"{labels[side]} ({phase})"
            print(f"  {label:38} {r['rate']:9.0f} {r['p50']:8.1f} {r['p99']:8.1f} {r['ack_rate']:8.0f} {r['ack_p99']:11.1f}")
    b = results["bolt"]
    print()
    for side in ("gateway-worker", "gateway"):
        g = results[side]
        print(f"  ratio {labels[side]} / Bolt: burst events/s {g['burst']['rate'] / b['burst']['rate']:.2f}, "
              f"burst p99 {g['burst']['p99'] / b['burst']['p99']:.2f}, "
              f"paced p99 {g['paced']['p99'] / b['paced']['p99']:.2f}; "
              f"ack p99 burst {g['burst']['ack_p99']:.1f} ms, paced {g['paced']['ack_p99']:.1f} ms")
    print("  (ack target: p99 < 100 ms; Slack allows 3000 ms)")


if __name__ == "__main__":
    main()
