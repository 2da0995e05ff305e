"""MIME parsing in a child process, beside the SMTP event loop.

Parsing a message into the ``email.receive`` fields is the largest share of
the gateway's CPU per message that is its own (the stdlib parser and the walk, ~0.05 ms
for 2 KB). Done on the event loop it delays every other session; done in a
thread it holds the GIL the loop needs. So, like Postfix's ``cleanup``
beside ``smtpd``, a child process parses: the loop sends each batch of raw
messages (all asked for in one loop iteration: the hand-off asks for a
linger's messages together, after their 250) down a pipe and gets the
parsed fields back.

The child is a plain blocking loop over :func:`~protocol_specs.email.parse_message`
(``python -m gateways.email.parsing``); frames are a 4-byte length and a
msgpack list each way. Should the child be missing (it died, it is
restarting), a parse resolves to ``None`` and the hand-off parses the message
itself: slower, never lost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import sys
import time
from typing import Any

import msgpack

from gateways.core.backoff import Backoff
from protocol_specs.email import parse_message

log = logging.getLogger("gateway.email")

_LENGTH = struct.Struct(">I")
#: What the child prints once it is ready to parse.
READY = b"ready\n"


class ParserProcess:
    """A child process that parses raw messages for the event loop.

    Args:
        python: the interpreter to run the child with.
        timeout: seconds a batch may take; past that the child is taken for hung,
            killed and started again, and its batches are parsed by the hand-off.
    """

    def __init__(self, python: str = sys.executable, timeout: float = 30.0) -> None:
        self.python = python
        self.timeout = timeout
        self._process: asyncio.subprocess.Process | None = None
        self._asked: list[tuple[bytes, asyncio.Future]] = []
        self._in_flight: collections.deque[list[asyncio.Future]] = collections.deque()
        self._flush_scheduled = False
        self._supervisor: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._sent_at: collections.deque[float] = collections.deque()
        self._watchdog: asyncio.Task | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Start the child and wait until it is ready (then keep it running)."""
        loop = asyncio.get_running_loop()
        self._supervisor = loop.create_task(self._supervise(), name="email parser")
        self._watchdog = loop.create_task(self._watch(), name="email parser watchdog")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("the parser process did not start within %ss; parsing on the event loop", timeout)

    def parse(self, raw: bytes) -> asyncio.Future:
        """A future of ``parse_message(raw)``, or of ``None`` when the child cannot do it."""
        future = asyncio.get_running_loop().create_future()
        if not self._ready.is_set():
            future.set_result(None)
            return future
        self._asked.append((raw, future))
        if not self._flush_scheduled:  # everything asked in this loop iteration goes as one batch
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        asked, self._asked = self._asked, []
        process = self._process
        if not asked:
            return
        if process is None or process.stdin is None or not self._ready.is_set():
            _resolve([future for _, future in asked], None)
            return
        frame = msgpack.packb([raw for raw, _ in asked], use_bin_type=True)
        try:
            process.stdin.write(_LENGTH.pack(len(frame)) + frame)
        except (OSError, RuntimeError):  # the pipe is gone: the supervisor restarts the child
            _resolve([future for _, future in asked], None)
            return
        self._in_flight.append([future for _, future in asked])
        self._sent_at.append(time.monotonic())

    async def _watch(self) -> None:
        # One watchdog, not a timer per batch: batches come hundreds a second.
        while True:
            await asyncio.sleep(self.timeout / 4)
            process = self._process
            if process is None or not self._sent_at or time.monotonic() - self._sent_at[0] < self.timeout:
                continue
            log.warning("the parser process took over %ss for a batch; starting a new one", self.timeout)
            process.kill()  # its reader sees the end and the supervisor starts another

    async def _supervise(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while not self._closing:
            try:
                await self._run_child()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: restart it
                log.warning("the parser process failed (%s); parsing on the event loop meanwhile", exc)
            finally:
                self._ready.clear()
                while self._in_flight:
                    _resolve(self._in_flight.popleft(), None)
                self._sent_at.clear()
            if self._closing:
                return
            await backoff.wait()

    async def _run_child(self) -> None:
        process = await asyncio.create_subprocess_exec(
            self.python, "-m", "gateways.email.parsing",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2 ** 26)
        self._process = process
        assert process.stdout is not None
        try:
            if await process.stdout.readline() != READY:
                raise RuntimeError(f"the parser process exited with {await process.wait()}")
            self._ready.set()
            while True:
                length = _LENGTH.unpack(await process.stdout.readexactly(_LENGTH.size))[0]
                results = msgpack.unpackb(await process.stdout.readexactly(length), raw=False)
                futures = self._in_flight.popleft()
                self._sent_at.popleft()
                for future, result in zip(futures, results):
                    if not future.done():
                        future.set_result(result)
        except asyncio.IncompleteReadError:
            if not self._closing:
                raise RuntimeError(f"the parser process exited with {await process.wait()}") from None
        finally:
            self._process = None
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def close(self) -> None:
        """Stop the child: it finishes the batches it has, then exits at end of input."""
        self._closing = True
        process = self._process
        if process is not None and process.stdin is not None:
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
        tasks = [task for task in (self._supervisor, self._watchdog) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _resolve(futures: list[asyncio.Future], value: Any) -> None:
    for future in futures:
        if not future.done():
            future.set_result(value)


def _read_exactly(stream: Any, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _packable(result: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        msgpack.packb(result, use_bin_type=True)
    except (TypeError, ValueError):
        return None
    return result


def main() -> None:
    """The child: parse each batch from stdin, answer on stdout, exit at end of input."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(READY)
    stdout.flush()
    while True:
        header = _read_exactly(stdin, _LENGTH.size)
        if header is None:
            return
        frame = _read_exactly(stdin, _LENGTH.unpack(header)[0])
        if frame is None:
            return
        results: list[dict[str, Any] | None] = []
        for raw in msgpack.unpackb(frame, raw=False):
            try:
                results.append(parse_message(raw))
            except Exception:  # noqa: BLE001 - the hand-off parses it again and logs why
                results.append(None)
        try:
            out = msgpack.packb(results, use_bin_type=True)
        except (TypeError, ValueError):  # one result that does not pack: that one is parsed again
            out = msgpack.packb([_packable(result) for result in results], use_bin_type=True)
        stdout.write(_LENGTH.pack(len(out)) + out)
        stdout.flush()


if __name__ == "__main__":
    main()
