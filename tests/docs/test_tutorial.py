"""docs/tutorial.md, followed the way a reader would.

The files the tutorial marks (``<!-- file: PATH -->`` creates PATH with the
code block below the marker, ``<!-- append: PATH -->`` appends it) are
written over a project made by the venv's ``django-admin startproject
mysite``; ``gateway up`` then runs the whole stack, and each protocol is
driven as the tutorial's *Try each protocol* says, with a real client.

Three changes to the reader's setup, each one the tutorial itself offers:
the fixed ports become free ones (other test runs share this machine), the
layer is this test's redis-server (the ``layer: {url: ...}`` line the
tutorial's gateway.yaml suggests), and Slack is the local stand-in of
tests/slack, reached through ``SLACK_API_URL``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import mailbox
import re
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import aiomqtt
import pytest
import websockets

from servers import REPO, Daemon, RedisServer, free_port, require_binary

TUTORIAL = REPO / "docs" / "tutorial.md"
MARKED = re.compile(r"<!-- (file|append): (\S+) -->\n```[\w-]*\n(.*?)^```", re.S | re.M)


def tutorial_files() -> list[tuple[str, str, str]]:
    """``(kind, path, content)`` for every marked code block, in order."""
    return MARKED.findall(TUTORIAL.read_text())


def standin_module():
    """tests/slack/standin.py, loaded by path (``slack`` is also slack_sdk's package name)."""
    spec = importlib.util.spec_from_file_location("tutorial_slack_standin", REPO / "tests" / "slack" / "standin.py")
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def test_the_tutorial_marks_the_files_a_reader_writes():
    files = {(kind, path) for kind, path, _ in tutorial_files()}
    assert files == {("append", "mysite/mysite/settings.py"), ("file", "mysite/gateway.yaml"),
                     ("file", "mysite/mysite/consumers.py"), ("file", "mysite/mysite/asgi.py")}
    text = TUTORIAL.read_text()
    assert "pip install 'channels-gateways[email,mqtt,slack]'" in text
    assert "django-admin startproject mysite" in text and "gateway up --config gateway.yaml" in text


def build_project(root: Path, ports: dict[int, int], redis_url: str) -> Path:
    """Run ``django-admin startproject mysite`` in ``root`` and write the tutorial's files."""
    django_admin = Path(sys.executable).with_name("django-admin")
    subprocess.run([str(django_admin), "startproject", "mysite"], cwd=root, check=True)
    for kind, path, content in tutorial_files():
        target = root / path
        if path.endswith("gateway.yaml"):
            for old, new in ports.items():
                content = content.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
            content = f"layer: {{url: '{redis_url}'}}\n" + content
        if kind == "append":
            assert target.exists(), f"the tutorial appends to {path}, which startproject did not make"
            target.write_text(target.read_text() + content)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    return root / "mysite"


async def chat_reaches_both(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
    async with websockets.connect(url) as alice, websockets.connect(url) as bob:
        # Bob joins the room right after his handshake; send until he is in it.
        for attempt in range(40):
            await alice.send(f"hello {attempt}")
            try:
                heard = await asyncio.wait_for(bob.recv(), 0.5)
                break
            except asyncio.TimeoutError:
                continue
        else:
            raise AssertionError("bob never heard alice in /ws/chat/lobby/")
        assert heard.startswith("hello ")
        while (said := await asyncio.wait_for(alice.recv(), 10)) != heard:
            pass  # alice hears her earlier lines too, from before bob joined
        assert said == heard
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{port}/nowhere/"):
            pass
    assert refused.value.response.status_code == 404


def send_help_mail(port: int) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "you@example.test", "help@mysite.test", "my printer"
    msg.set_content("It is on fire.")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(msg)


async def answered_mail(maildir: Path, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (maildir / "new").is_dir():
            found = list(mailbox.Maildir(maildir, create=False))
            if found:
                return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no answer in {maildir}/new after {timeout}s")


async def fans_answer(port: int) -> list[tuple[str, str]]:
    """Report 31 then 19 degrees in the kitchen; return the fan commands seen."""
    seen: list[tuple[str, str]] = []
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("rooms/#", qos=1)
        for degrees, expected in (("31", "on"), ("19", "off")):
            await client.publish("sensors/kitchen/temperature", degrees, qos=1)
            async with asyncio.timeout(30):
                async for message in client.messages:
                    seen.append((str(message.topic), message.payload.decode()))
                    if seen[-1] == ("rooms/kitchen/fan", expected):
                        break
    return seen


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_the_tutorial_runs(tmp_path):
    require_binary("mosquitto", "mosquitto")
    standin_lib = standin_module()
    ports = {8765: free_port(), 2525: free_port(), 1883: free_port()}
    redis = RedisServer().start()
    standin = standin_lib.SlackStandIn().start()
    up = None
    try:
        project = build_project(tmp_path, ports, redis.url)
        check = subprocess.run([sys.executable, "-m", "gateways", "check", "--config", "gateway.yaml"],
                               cwd=project, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert check.stdout.strip() == "gateway.yaml: OK (email, mqtt, slack, websocket)"  # as the tutorial shows
        up = Daemon("tutorial-up", [sys.executable, "-m", "gateways", "up", "--config", "gateway.yaml"],
                    cwd=project, env={"SLACK_APP_TOKEN": standin.app_token, "SLACK_BOT_TOKEN": standin.bot_token,
                                      "SLACK_API_URL": standin.api_url})
        up.wait_for_log("stack running", timeout=60)
        up.wait_for_log("Running worker for channels", timeout=30)
        up.wait_for_log("subscribed to sensors/+/temperature", timeout=30)
        up.wait_for_log("Socket Mode connected", timeout=30)

        await chat_reaches_both(ports[8765])

        await asyncio.to_thread(send_help_mail, ports[2525])
        answer = await answered_mail(project / "mail")
        assert answer["Subject"] == "Re: my printer" and answer["To"] == "you@example.test"
        assert "Thanks, we got your mail about 'my printer'." in answer.get_payload(decode=True).decode()

        seen = await fans_answer(ports[1883])
        assert ("rooms/kitchen/fan", "on") in seen and seen[-1] == ("rooms/kitchen/fan", "off")

        standin.send_envelope("events_api", standin_lib.event_callback(
            standin_lib.message_event("C0TUTORIAL", "hello bot")))
        call = await asyncio.to_thread(standin.wait_call, "chat.postMessage", 30, 200, channel="C0TUTORIAL")
        assert call.params["text"] == f"hello <@{standin_lib.HUMAN}>"

        up.proc.send_signal(signal.SIGINT)  # the reader's Ctrl-C
        assert await asyncio.to_thread(up.proc.wait, 40) == 0, up.log()
    except BaseException:
        if up is not None:
            print(up.log())
        raise
    finally:
        if up is not None:
            up.stop()
        standin.stop()
        redis.close()
