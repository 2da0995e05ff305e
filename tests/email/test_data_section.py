"""The bulk DATA reader gives what aiosmtpd's own line-by-line DATA gives.

The reference is a real stock aiosmtpd server: each section of the corpus
is sent to it and to a gateway session class over sockets, and the
answers and the contents each handler saw are compared. The reader alone
is then fed every section cut at every point (and big ones at random
points), since where the stream is cut is where a bulk reader can go wrong.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from aiosmtpd.smtp import SMTP

from gateways.email.data_section import TOO_LONG, TOO_MUCH, DataSection, read_data_section
from gateways.email.smtp import GatewaySMTP, _Limits

SIZE_LIMIT = 6000
LINE_LIMIT = SMTP.line_length_limit
_rng = random.Random(5321)
_PROSE = b"".join(
    _rng.choice([b"word ", b"end.", b"\r\n", b".", b"..", b"\r\n.", b"x" * 40, b"\r\n..", b"\t"])
    for _ in range(600)).replace(b"\r\n.\r\n", b"\r\n..\r\n").replace(b"\r\n.\r\n", b"\r\n..\r\n") + b"\r\n"

#: DATA sections (terminator included), then what the client sends after them.
SECTIONS = [
    b".\r\n",
    b"a\r\n.\r\n",
    b"\r\n.\r\n",
    b"\r\n\r\n.\r\n",
    b"..\r\n.\r\n",
    b".x\r\n..y\r\nz.\r\n.\r\n",
    b"\r\n..\r\n.\r\n",
    b"end.\r\nmore.\r\n.\r\n",
    b"a\n.\r\nb\r\n.\r\n",  # smuggling: bare LF before the dot
    b"a\r.\r\nb\r\n.\r\n",  # bare CR before the dot
    b"a\r\n.\n.\r\nb\r\n.\r\n",
    b"a\r\n.\r.\r\n\r\n.\r\n",
    b"\x00\xff\xfe binary \x80\r\n.\r\n",
    b"y" * 997 + b"\r\n.\r\n",
    b"y" * 998 + b"\r\n.\r\n",
    b"y" * 999 + b"\r\n.\r\n",
    b"y" * 1000 + b"\r\n.\r\n",
    b"." + b"y" * 998 + b"\r\n.\r\n",
    b"head\r\n" + b"z" * 3000 + b"\r\n.\r\n",
    b"z" * 1500 + b"\n" + b"z" * 10 + b"\r\n.\r\n",
    (b"q" * 70 + b"\r\n") * 84 + b".\r\n",  # 6048 bytes: over the size limit
    (b"q" * 70 + b"\r\n") * 83 + b"q" * 22 + b"\r\n.\r\n",  # 6000 bytes: exactly the limit
    (b"q" * 70 + b"\r\n") * 83 + b"q" * 23 + b"\r\n.\r\n",  # 6001 bytes
    _PROSE[:5000] + b"\r\n.\r\n",
]


class Capture:
    """Answers 250 and keeps what each DATA carried."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.contents.append(envelope.original_content)
        return "250 OK"


async def _serve(session_class: type) -> tuple[asyncio.Server, Capture, int]:
    capture = Capture()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: session_class(capture, data_size_limit=SIZE_LIMIT, hostname="t.test", loop=loop), "127.0.0.1", 0)
    return server, capture, server.sockets[0].getsockname()[1]


async def _transcript(port: int, section: bytes) -> list[bytes]:
    """The answers after DATA's 354, to ``section`` then a NOOP and QUIT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for command in (b"HELO c.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>", b"DATA"):
        writer.write(command + b"\r\n")
        await reader.readline()
    writer.write(section + b"NOOP\r\nQUIT\r\n")  # pipelined: must be read as commands
    answers = []
    while line := await reader.readline():
        answers.append(line.split(b" ")[0])  # the codes: the gateway words 552 as 5.3.4
    writer.close()
    return answers


@pytest.mark.integration
async def test_sections_over_sockets_match_stock_aiosmtpd():
    stock, stock_seen, stock_port = await _serve(SMTP)
    bulk, bulk_seen, bulk_port = await _serve(type("Bulk", (GatewaySMTP,), {"limits": _Limits(100)}))
    try:
        for section in SECTIONS:
            expected = await _transcript(stock_port, section)
            assert await _transcript(bulk_port, section) == expected, section[:60]
            assert expected[-2:] == [b"250", b"221"]  # NOOP and QUIT were read as commands
        assert bulk_seen.contents == stock_seen.contents
        assert len(stock_seen.contents) == len(SECTIONS) - 5  # the refused ones never reach the handler
    finally:
        stock.close()
        bulk.close()


async def _reference() -> dict[bytes, tuple[bytes, str | None]]:
    """What stock aiosmtpd makes of each section: (content, refusal)."""
    server, capture, port = await _serve(SMTP)
    results = {}
    try:
        for section in SECTIONS:
            before = len(capture.contents)
            answers = await _transcript(port, section)
            if len(capture.contents) > before:
                results[section] = (capture.contents[-1], None)
            else:
                results[section] = (b"", {b"500": TOO_LONG, b"552": TOO_MUCH}[answers[0]])
    finally:
        server.close()
    return results


async def _read_cut(section: bytes, cuts: list[int]) -> tuple[bytes, str | None, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    bounds = [0, *sorted(cuts), len(section)]
    feeding = asyncio.ensure_future(_feed(reader, [section[a:b] for a, b in zip(bounds, bounds[1:])] + [b"NOOP\r\n"]))
    result = await read_data_section(reader, SIZE_LIMIT, LINE_LIMIT)
    await feeding
    return result.content, result.refusal, await reader.read(100)


async def _feed(reader: asyncio.StreamReader, pieces: list[bytes]) -> None:
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)  # let the reader see each piece alone


@pytest.mark.integration
async def test_every_cut_of_the_stream_reads_the_same():
    reference = await _reference()
    for section in SECTIONS:
        expected = (*reference[section], b"NOOP\r\n")
        if len(section) <= 64:
            cuts_list = [[cut] for cut in range(1, len(section))] + [list(range(1, len(section)))]
        else:
            cuts_list = [_rng.sample(range(1, len(section)), k) for k in (1, 2, 5, 30)]
            cuts_list += [[n for n in range(1, len(section)) if section[n - 1:n + 2] == b"\r\n."]]
        for cuts in cuts_list:
            assert await _read_cut(section, cuts) == expected, (section[:60], cuts[:10])


@pytest.mark.parametrize("size_limit", [0, None])
async def test_no_size_limit(size_limit):
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    body = (b"q" * 70 + b"\r\n") * 1000
    reader.feed_data(body + b".\r\n")
    assert (await read_data_section(reader, size_limit, LINE_LIMIT)).content == body


async def test_too_much_is_answered_before_too_long():
    # aiosmtpd answers whichever it meets first; the bulk reader says "too much"
    # whenever it is (DataSection). Both refuse the whole message.
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    reader.feed_data(b"z" * 1200 + b"\r\n" + (b"q" * 70 + b"\r\n") * 84 + b".\r\n")
    assert await read_data_section(reader, SIZE_LIMIT, LINE_LIMIT) == DataSection(b"", TOO_MUCH)
