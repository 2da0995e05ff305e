"""The sans-I/O half of the line gateway: bytes in, messages out, and back."""

from gateways.core.specs import load_schema
from line_gateway import protocol

SCHEMA = load_schema("line")


def test_lines_split_across_reads_come_out_whole():
    decoder = protocol.LineDecoder(max_length=100)
    assert decoder.feed(b"hel") == []
    assert decoder.feed(b"lo\r\nwor") == ["hello"]
    assert decoder.feed(b"ld\n") == ["world"]


def test_a_long_line_is_answered_once_and_skipped_to_its_end():
    decoder = protocol.LineDecoder(max_length=4)
    assert decoder.feed(b"123456") == [protocol.TOO_LONG]
    assert decoder.feed(b"789\nok\n") == ["ok"]


def test_undecodable_bytes_are_answered():
    assert protocol.LineDecoder(max_length=10).feed(b"\xff\n") == [protocol.NOT_UTF8]


def test_messages_match_the_schema():
    assert SCHEMA.problem(protocol.receive_message("hi", "specific.a!b")) is None
    assert protocol.send_bytes({"type": "line.send", "text": "hi"}) == b"hi\n"
    assert SCHEMA.problem({"type": "line.send", "text": "two\nlines"}) is not None


def test_invalid_answer_is_one_line():
    assert protocol.invalid_answer("line.send: text:\n bad").count(b"\n") == 1
