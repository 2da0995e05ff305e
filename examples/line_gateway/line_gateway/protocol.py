"""The line protocol, sans-I/O: bytes in, channel messages out; consumer
messages in, bytes out. No sockets, no event loop: the daemon does the I/O."""

from __future__ import annotations

from typing import Any

OK = b"OK\n"
BUSY = b"ERR busy\n"
TOO_LONG = b"ERR too long\n"
NOT_UTF8 = b"ERR not UTF-8\n"


class LineDecoder:
    """Splits a byte stream into lines.

    Args:
        max_length: longest line in bytes; a longer one is answered once with
            :data:`TOO_LONG` and skipped up to its end.
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[str | bytes]:
        """The complete lines in ``data`` after what came before: each a str,
        or the error answer (bytes) for a line too long or not UTF-8."""
        *lines, rest = (self._buffer + data).split(b"\n")
        found: list[str | bytes] = []
        for line in lines:
            if self._skipping:  # the end of a line already answered
                self._skipping = False
                continue
            found.append(TOO_LONG if len(line) > self.max_length else _decode(line))
        self._buffer = rest
        if len(rest) > self.max_length and not self._skipping:
            found.append(TOO_LONG)
            self._skipping = True
        if self._skipping:
            self._buffer = b""
        return found


def _decode(line: bytes) -> str | bytes:
    try:
        return line.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8


def receive_message(text: str, reply_channel: str) -> dict[str, Any]:
    """The ``line.receive`` message for one line of a connection."""
    return {"type": "line.receive", "reply_channel": reply_channel, "text": text}


def send_bytes(message: dict[str, Any]) -> bytes:
    """The bytes a valid ``line.send`` writes to the client."""
    return message["text"].encode("utf-8") + b"\n"


def invalid_answer(problem: str) -> bytes:
    """What the client reads when its consumer sent an invalid message."""
    return f"ERR invalid reply: {' '.join(problem.split())}\n".encode("utf-8")
