"""docs/tutorial.md, followed the way a reader would.

The files the tutorial marks (``<!-- file: PATH -->`` creates PATH with the
code block below the marker, ``<!-- append: PATH -->`` appends it) are
written over a project made by the venv's ``django-admin startproject
mysite``. The commands are the tutorial's own lines (each is looked up in its
``sh`` blocks), run with the venv's ``bin`` first on PATH as the reader's
activated venv has it: ``gateway check``, ``manage.py check``, the Slack
stand-in, ``gateway up`` (with the embedded layer, which ``manage.py``
finds through the runtime file), ``curl`` into the stand-in and the
``notify`` management command while the stack runs. The protocols the
tutorial drives by hand are driven with real clients.

One change to the reader's setup: the fixed ports become free ones (other
test runs share this machine), in gateway.yaml and in the commands; the
stand-in gets ``--listen`` for its port.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import aiomqtt
import pytest
import websockets

from servers import PYTHON, REPO, Daemon, free_port, require_binary

TUTORIAL = REPO / "docs" / "tutorial.md"
MARKED = re.compile(r"<!-- (file|append): (\S+) -->\n```[\w-]*\n(.*?)^```", re.S | re.M)
VENV_BIN = Path(PYTHON).parent  # the reader's activated venv: python, gateway, django-admin

# The reader's fixed ports, each replaced by a free one.
WEBSOCKET, SMTP, MQTT, STANDIN = 8765, 2525, 1883, 8790


def tutorial_files() -> list[tuple[str, str, str]]:
    """``(kind, path, content)`` for every marked code block, in order."""
    return MARKED.findall(TUTORIAL.read_text())


def tutorial_commands() -> dict[str, str]:
    """Every line of the tutorial's ``sh`` blocks -> its trailing comment (what it prints)."""
    commands = {}
    for block in re.findall(r"^```sh\n(.*?)^```", TUTORIAL.read_text(), re.S | re.M):
        for line in block.splitlines():
            command, comment = re.fullmatch(r"(.*?)(?:\s{2,}#\s*(.*))?", line).groups()
            commands[command.strip()] = (comment or "").strip()
    return commands


def tutorial_says(command: str) -> str:
    """``command`` as the tutorial prints it (failing if it does not), and its comment."""
    commands = tutorial_commands()
    assert command in commands, f"the tutorial no longer says {command!r}"
    return commands[command]


def argv_env(command: str, ports: dict[int, int]) -> tuple[list[str], dict[str, str]]:
    """A tutorial line as argv plus the variables it sets (``export A=B``), ports replaced."""
    for old, new in ports.items():
        command = command.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    words = shlex.split(command)
    env = {}
    if words[0] == "export":
        words = words[1:]
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return words, env


def reader_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The reader's shell: the venv's bin first on PATH, no settings of other tests."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GATEWAY_LAYER_URL", "GATEWAY_CONFIG", "DJANGO_SETTINGS_MODULE")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **(extra or {})}


def run(command: str, cwd: Path, ports: dict[int, int]) -> subprocess.CompletedProcess:
    """Run a tutorial line to completion; return what it printed."""
    tutorial_says(command)
    argv, env = argv_env(command, ports)
    return subprocess.run(argv, cwd=cwd, env=reader_env(env), capture_output=True, text=True, timeout=60)


def test_the_tutorial_marks_the_files_a_reader_writes():
    files = {(kind, path) for kind, path, _ in tutorial_files()}
    assert files == {("append", "mysite/mysite/settings.py"), ("file", "mysite/gateway.yaml"),
                     ("file", "mysite/mysite/consumers.py"), ("file", "mysite/mysite/asgi.py"),
                     ("file", "mysite/mysite/management/commands/notify.py")}
    text = TUTORIAL.read_text()
    assert "pip install 'channels-gateways[email,mqtt,slack]'" in text
    yaml = next(content for _, path, content in tutorial_files() if path.endswith("gateway.yaml"))
    assert not re.search(r"^layer:", yaml, re.M), "the tutorial runs on the layer gateway up embeds"


def build_project(root: Path, ports: dict[int, int]) -> Path:
    """Run ``django-admin startproject mysite`` in ``root`` and write the tutorial's files."""
    assert run("django-admin startproject mysite", root, ports).returncode == 0
    for kind, path, content in tutorial_files():
        target = root / path
        if path.endswith("gateway.yaml"):
            for old, new in ports.items():
                content = content.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
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


def send_help_mail(project: Path, ports: dict[int, int]) -> None:
    """Run the ``python -c`` of the tutorial's email block in bash (its ``ls`` is checked by the caller)."""
    block = next(b for b in re.findall(r"^```sh\n(.*?)^```", TUTORIAL.read_text(), re.S | re.M) if "smtplib" in b)
    sending, _, listing = block.partition("\nls mail/new/")
    assert sending.startswith("python -c '") and listing, block
    sending = sending.replace('"127.0.0.1", 2525', f'"127.0.0.1", {ports[SMTP]}')
    assert str(ports[SMTP]) in sending
    done = subprocess.run(["bash", "-c", sending], cwd=project, env=reader_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def mail_with_subject(maildir: Path, subject: str, timeout: float = 30.0):
    """The mail in ``maildir``/new with ``subject``, once the relay wrote it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (maildir / "new").is_dir():
            for found in mailbox.Maildir(maildir, create=False):
                if found["Subject"] == subject:
                    return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no mail {subject!r} in {maildir}/new after {timeout}s")


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
    require_binary("curl", "curl")
    ports = {WEBSOCKET: free_port(), SMTP: free_port(), MQTT: free_port(), STANDIN: free_port()}
    project = build_project(tmp_path, ports)
    text = TUTORIAL.read_text()

    # 3. Both checks pass, and print what the tutorial's comments say; manage.py needs no stack for this.
    for command in ("gateway check --config gateway.yaml", "python manage.py check"):
        done = run(command, project, ports)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == tutorial_says(command), command

    # 6. The stand-in in one terminal, gateway up in another.
    standin_command = "python -m consumers.testing.slack_standin"
    tutorial_says(standin_command)
    argv, _ = argv_env(standin_command, ports)
    standin = Daemon("tutorial-standin", argv + ["--listen", f"127.0.0.1:{ports[STANDIN]}"],
                     env=reader_env(), cwd=project)
    up = None
    try:
        standin.wait_for_log(f"Slack stand-in listening on http://127.0.0.1:{ports[STANDIN]}", timeout=30)
        export = next(c for c in tutorial_commands() if c.startswith("export SLACK_API_URL="))
        _, slack_env = argv_env(export, ports)
        assert slack_env["SLACK_API_URL"] == f"http://127.0.0.1:{ports[STANDIN]}/api/"
        argv, _ = argv_env("gateway up --config gateway.yaml", ports)
        tutorial_says("gateway up --config gateway.yaml")
        up = Daemon("tutorial-up", argv, env=reader_env(slack_env), cwd=project)
        up.wait_for_log("stack running", timeout=60)
        up.wait_for_log("Running worker for channels", timeout=30)
        up.wait_for_log("subscribed to sensors/+/temperature", timeout=30)
        up.wait_for_log("Socket Mode connected", timeout=30)
        assert (project / ".gateway.yaml.layer").is_file(), up.log()  # where manage.py finds the layer

        # 7. Each protocol.
        await chat_reaches_both(ports[WEBSOCKET])

        await asyncio.to_thread(send_help_mail, project, ports)
        answer = await mail_with_subject(project / "mail", "Re: my printer")
        assert answer["To"] == "you@example.test"
        assert "Thanks, we got your mail about 'my printer'." in answer.get_payload(decode=True).decode()

        seen = await fans_answer(ports[MQTT])
        assert ("rooms/kitchen/fan", "on") in seen and seen[-1] == ("rooms/kitchen/fan", "off")

        curl = "curl -d '{\"channel\": \"C0GENERAL\", \"text\": \"hello bot\"}' http://127.0.0.1:8790/inject/message"
        injected = await asyncio.to_thread(run, curl, project, ports)
        assert injected.returncode == 0 and '"ok": true' in injected.stdout, injected.stdout + injected.stderr
        answered = 'web api  chat.postMessage {"channel": "C0GENERAL", "text": "hello <@U0HUMAN>"} -> ok'
        assert f"`{answered}`" in text
        await asyncio.to_thread(standin.wait_for_log, answered, 30)

        # 8. The management command, in a third terminal, finds gateway up's layer.
        notify = 'python manage.py notify "The printer is fixed." --slack C0GENERAL'
        done = await asyncio.to_thread(run, notify, project, ports)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["mailed team@example.test", "posted in C0GENERAL: ok=True"]
        assert "`mailed team@example.test` and `posted in C0GENERAL: ok=True`" in text
        notice = await mail_with_subject(project / "mail", "Notice from mysite", timeout=5)
        assert notice["From"] == "noreply@mysite.test" and notice["To"] == "team@example.test"
        assert notice.get_payload(decode=True).decode().strip() == "The printer is fixed."
        await asyncio.to_thread(standin.wait_for_log,
                                'chat.postMessage {"channel": "C0GENERAL", "text": "The printer is fixed."} -> ok', 10)

        up.proc.send_signal(signal.SIGINT)  # the reader's Ctrl-C
        assert await asyncio.to_thread(up.proc.wait, 40) == 0, up.log()
        assert not (project / ".gateway.yaml.layer").exists()
    except BaseException:
        if up is not None:
            print(up.log())
        print(standin.log())
        raise
    finally:
        if up is not None:
            up.stop()
        standin.stop()
