"""The pure translation: MIME <-> messages, routing, recipient policy, smuggling checks."""

from __future__ import annotations

import email
import email.policy
import random
import socket

import pytest

from corpus import CORPUS
from gateways.core.specs import load_schema
from gateways.email.protocol import (
    OutboundError,
    RecipientPolicy,
    Route,
    Router,
    build_outbound,
    header_subject,
    line_ending_problem,
    sender_allowed,
)
from protocol_specs.email import (
    _PLAIN_ADDRESS,
    _PLAIN_CONTENT_TYPE,
    Delivery,
    Envelope,
    compose_message,
    content_fields,
    content_fields_parsed,
    failed_message,
    receive_message,
    sent_message,
    _addresses,
    _addresses_parsed,
)

SCHEMA = load_schema("email")
#: The host name a gateway passes for Message-IDs of senders without a domain.
HOST = "mx.demo.local"


def receive(raw: bytes, recipients=("inbox@demo.local",)) -> dict:
    message = receive_message(raw, Envelope("a@example.test", list(recipients), peer="127.0.0.1:1"),
                              id="x.0", reply_channel="specific.a!b",
                              delivery=Delivery("email.receive", list(recipients)))
    assert SCHEMA.problem(message) is None, SCHEMA.problem(message)
    return message


MULTIPART = (
    b"From: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\n"
    b"To: Inbox <inbox@demo.local>, other@demo.local\r\n"
    b"Cc: c@example.test\r\n"
    b"Subject: =?iso-8859-1?q?caf=E9?= order 42\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"In-Reply-To: <m0@example.test>\r\n"
    b"References: <a@x>\r\n <m0@example.test>\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n"
    b"--c\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"gr=C3=BC=C3=9Fe\r\n"
    b"--c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>\r\n--c--\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"
)


def test_receive_decodes_headers_parts_and_attachments():
    m = receive(MULTIPART)
    assert m["type"] == "email.receive"
    assert m["subject"] == "café order 42"
    assert m["from"] == [{"name": "Jörg", "address": "j@example.test"}]
    assert [a["address"] for a in m["to"]] == ["inbox@demo.local", "other@demo.local"]
    assert m["cc"][0]["address"] == "c@example.test"
    assert m["message_id"] == "<m1@example.test>"
    assert m["in_reply_to"] == "<m0@example.test>"
    assert m["references"] == ["<a@x>", "<m0@example.test>"]
    assert m["text"] == "grüße"
    assert m["html"] == "<p>hi</p>"
    (attachment,) = m["attachments"]
    assert attachment["filename"] == "r.pdf"
    assert attachment["content"] == b"%PDF-"
    assert attachment["size"] == 5
    tree = m["parts"]
    assert tree["content_type"] == "multipart/mixed"
    assert [p["content_type"] for p in tree["parts"]] == ["multipart/alternative", "application/pdf"]
    assert tree["parts"][0]["parts"][0]["body"] == "grüße".encode()
    assert tree["parts"][1]["attachment"] == 0
    assert m["raw"] == MULTIPART
    # envelope recipients are distinct from the header's To
    assert m["envelope"]["rcpt_to"] == ["inbox@demo.local"]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_corpus_parses_without_crash(name):
    raw = CORPUS[name]
    m = receive(raw)
    assert m["raw"] == raw
    assert line_ending_problem(raw) is None


def test_corpus_details_survive():
    assert receive(CORPUS["8bit_headers"])["subject"] == "Grüße aus Köln"
    assert receive(CORPUS["8bit_headers"])["from"][0]["name"] == "Jörg Müller"
    assert receive(CORPUS["unknown_charset"])["text"] == "café au lait\n"
    assert "na" in receive(CORPUS["non_utf8_text"])["text"]
    nameless = receive(CORPUS["attachments_without_names"])
    assert [a["filename"] for a in nameless["attachments"]] == [None, None]
    assert nameless["attachments"][0]["content"] == bytes(range(6))
    assert receive(CORPUS["rfc2231_filename"])["attachments"][0]["filename"] == "résumé.txt"
    assert "inner plain ✓" in receive(CORPUS["nested_multiparts"])["text"]
    assert receive(CORPUS["empty_message"])["subject"] == ""
    huge = receive(CORPUS["huge_headers"])
    assert len(huge["headers"]) > 500 and huge["text"] == "body after huge headers\n"


def test_line_endings_smuggling():
    assert line_ending_problem(b"a\r\nb\r\n") is None
    assert "bare LF" in line_ending_problem(b"a\r\n\n.\r\nMAIL FROM:<x@y>\r\n")
    assert "bare CR" in line_ending_problem(b"a\r\n\r.\r\n")
    assert "bare LF" in line_ending_problem(b"a\r\n.\n")


def test_recipient_policy_is_never_an_open_relay():
    policy = RecipientPolicy(["demo.local", "*.corp.test"])
    assert policy.accepts("echo@demo.local")
    assert policy.accepts("Echo@DEMO.local")
    assert policy.accepts("x@eu.corp.test")
    assert not policy.accepts("x@corp.test")
    assert not policy.accepts("x@demo.local.evil.test")
    assert not policy.accepts("x@evil.test")
    assert not policy.accepts("demo.local")
    assert not policy.accepts("@demo.local")
    restricted = RecipientPolicy(["demo.local"], [r"(echo|support\+\d+)@demo\.local"])
    assert restricted.accepts("support+12@demo.local")
    assert not restricted.accepts("other@demo.local")


def test_router_first_match_wins_and_each_channel_once():
    router = Router([
        Route.compile("email.support", address=r"support\+(?P<ticket>\d+)@demo\.local"),
        Route.compile("email.orders", subject=r"order (?P<number>\d+)"),
        Route.compile("email.partner", domain=r"(?P<sub>\w+)\.partner\.test"),
    ], "email.receive")
    out = router.deliveries(["support+7@demo.local", "support+8@demo.local", "a@x.partner.test", "b@demo.local"],
                            "hello")
    assert [(d.channel, d.recipients, d.kwargs) for d in out] == [
        ("email.support", ["support+7@demo.local", "support+8@demo.local"], {"ticket": "7"}),
        ("email.partner", ["a@x.partner.test"], {"sub": "x"}),
        ("email.receive", ["b@demo.local"], {}),
    ]
    (orders,) = router.deliveries(["b@demo.local"], "Re: order 42 late")
    assert (orders.channel, orders.kwargs) == ("email.orders", {"number": "42"})


def test_header_subject_reads_only_the_header_block():
    assert header_subject(MULTIPART) == "café order 42"
    assert header_subject(b"To: x\r\n\r\nSubject: not a header\r\n") == ""


def test_build_outbound_threads_and_encodes():
    out = build_outbound({
        "type": "email.send", "from": "Echo <echo@demo.local>", "to": ["you@example.test"],
        "cc": "c@example.test", "bcc": ["hidden@example.test"], "subject": "Re: café",
        "text": "body ✓\n", "html": "<p>body</p>", "in_reply_to": "<m1@x>", "references": ["<m0@x>", "<m1@x>"],
        "headers": [["Auto-Submitted", "auto-replied"]],
        "attachments": [{"filename": "a.bin", "content_type": "application/octet-stream", "content": b"\x00\x01"}],
    }, domain=HOST)
    assert out.sender == "echo@demo.local"
    assert out.recipients == ["you@example.test", "c@example.test", "hidden@example.test"]
    assert b"\r\n" in out.data and b"\n" not in out.data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(out.data, policy=email.policy.default)
    assert parsed["Subject"] == "Re: café"
    assert parsed["In-Reply-To"] == "<m1@x>"
    assert parsed["References"] == "<m0@x> <m1@x>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Bcc"] is None
    assert parsed["Message-ID"] == out.message_id
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "body ✓\n"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>body</p>"
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "a.bin" and attachment.get_content() == b"\x00\x01"


def test_build_outbound_raw_and_refusals():
    out = build_outbound({"type": "email.send", "from": "echo@demo.local", "to": "x@example.test",
                          "raw": b"Subject: raw\nMessage-ID: <r@x>\n\nbody\n"}, domain=HOST)
    assert out.data == b"Subject: raw\r\nMessage-ID: <r@x>\r\n\r\nbody\r\n"
    assert out.message_id == "<r@x>"
    with pytest.raises(OutboundError, match="line breaks"):
        build_outbound({"type": "email.send", "from": "echo@demo.local", "to": "x@example.test",
                        "subject": "hi\r\nBcc: victim@example.test"}, domain=HOST)
    with pytest.raises(OutboundError, match="no recipient"):
        build_outbound({"type": "email.send", "from": "echo@demo.local"}, domain=HOST)
    with pytest.raises(OutboundError, match="not an email address"):
        build_outbound({"type": "email.send", "from": "echo@demo.local", "to": "nobody"}, domain=HOST)
    with pytest.raises(OutboundError, match="header name"):
        build_outbound({"type": "email.send", "from": "echo@demo.local", "to": "x@example.test",
                        "headers": [["Bad Name", "v"]]}, domain=HOST)


def test_building_messages_looks_up_no_host_name(monkeypatch):
    """The pure modules take the Message-ID domain as an argument: no blocking socket.getfqdn()."""
    def lookup():
        raise AssertionError("socket.getfqdn() called while building a message")

    monkeypatch.setattr(socket, "getfqdn", lookup)
    # The null sender has no domain: the Message-ID takes the gateway's host name.
    bounce = build_outbound({"type": "email.send", "from": "echo@demo.local", "envelope_from": "",
                             "to": "x@example.test", "text": "t"}, domain=HOST)
    assert bounce.sender == "" and bounce.message_id.endswith("@mx.demo.local>")
    reply = build_outbound({"type": "email.send", "from": "echo@demo.local", "to": "x@example.test",
                            "html": "<p>h</p>"}, domain=HOST)
    assert reply.message_id.endswith("@demo.local>")
    data, message_id = compose_message({"type": "email.send", "from": "a@b.test", "to": "c@d.test"},
                                       domain="given.test")
    assert message_id.endswith("@given.test>") and message_id.encode() in data
    for raw in CORPUS.values():
        receive(raw)


def test_sender_allowed():
    allowed = ["@demo.local", "ops@example.test"]
    assert sender_allowed("echo@demo.local", allowed)
    assert sender_allowed("OPS@example.test", allowed)
    assert not sender_allowed("other@example.test", allowed)
    assert not sender_allowed("x@demo.local.evil.test", allowed)


def test_outcome_messages_match_the_schema():
    send = {"type": "email.send", "id": "s1", "from": "echo@demo.local", "to": "x@example.test", "text": "t"}
    assert SCHEMA.problem(send) is None
    out = build_outbound(send, domain=HOST)
    sent = sent_message(send, message_id=out.message_id, recipients=out.recipients, response="250 OK", attempts=1)
    assert SCHEMA.problem(sent) is None and sent["id"] == "s1" and sent["refused"] == {}
    failed = failed_message(send, "550 no", code=550, permanent=True, attempts=1, recipients=["x@example.test"])
    assert SCHEMA.problem(failed) is None
    assert SCHEMA.problem({"type": "email.ack", "id": "x.0"}) is None
    assert SCHEMA.problem({"type": "email.send", "from": "a@b", "attachments": [{"content": "str"}]})


def _address_forms() -> list[str]:
    rng = random.Random(2822)
    pieces = ["john", "Doe", "a.b", "x-y", "o'neil", " ", "  ", "\t", "<", ">", "@", ".", "..", ",", '"', "(c)",
              "ex.test", "ö", ":", ";", "[1.2.3.4]", "\\", "_", "+tag"]
    forms = ["a@example.test", "John Doe <jd@x.test>", "<bare@x.test>", "John  Q  Doe <q@x.test>",
             " spaced  <s@x.test> ", "John Doe<jd@x.test>", "dot.name <d@x.test>", "Jane_Doe-1 <jd@x.test>",
             "a..b@x.test", "a@b, c@d",
             '"Doe, John" <jd@x.test>', "Name (c) <n@x.test>", "@x.test", "a@", "<a@b> z", "a b@c", "a@b.", ".a@b",
             "<a@b>>", "<<a@b>", "Jörg <j@x.test>", "John\tDoe\t<jd@x.test>", "", " ", "x"]
    atoms = ["john", "Doe", "x-y", "o'neil", "_", "+tag", "A1", "é", "a.b", '"q"', "(c)", ""]
    blanks = ["", " ", "  ", "\t", " \t"]

    def words(n: int, joiner: list[str]) -> str:
        return rng.choice(joiner).join(rng.choice(atoms) for _ in range(n))

    for _ in range(3000):
        forms.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
        address = f"{words(rng.randint(1, 3), ['.', '..'])}@{words(rng.randint(1, 3), ['.'])}"
        name = words(rng.randint(0, 3), [" ", "  ", "\t", ""])
        forms.append(rng.choice([address, f"{name} <{address}>", f"{name}<{address}>", f"<{address}>"]).join(
            [rng.choice(blanks), rng.choice(blanks)]))
    return forms


def test_plain_address_fast_path_reads_as_getaddresses_does():
    fast = 0
    for value in _address_forms():
        assert _addresses([value]) == _addresses_parsed([value]), repr(value)
        fast += _PLAIN_ADDRESS.fullmatch(value) is not None
    assert fast > 300  # the comparison covers the fast path, not only the fallback


def test_plain_content_type_fast_path_reads_as_the_stdlib_does():
    rng = random.Random(2045)
    types = ["text/plain", "TEXT/HTML", "application/pdf", "image/svg+xml", "text/x-c", "textplain", "text/plain/x",
             "text/", "/plain", "multipart/mixed", "message/rfc822", ""]
    params = ["", "; charset=utf-8", ";charset=UTF-8", "; CHARSET=\"ISO-8859-1\"", "; charset=\"\"", "; charset=",
              "; charset=utf-8;", " ; charset = utf-8", "; charset=utf-8; format=flowed", "; name=\"a.pdf\"",
              "; charset*=utf-8''%E2%82%AC", "; charset=\xe9", "; (c) charset=latin1", "; boundary=zz",
              "; charset=\"utf-8", "; charset=x'y", "; charset=a/b"]
    blanks = ["", " ", "\t", "  "]
    dispositions = [None, None, "inline", "attachment", "attachment; filename=\"r.txt\"", "INLINE"]
    fast = 0
    for _ in range(3000):
        value = rng.choice(blanks) + rng.choice(types) + rng.choice(blanks) + rng.choice(params) + rng.choice(blanks)
        disposition = rng.choice(dispositions)
        raw = ("Content-Type: " + value + "\r\n" if value.strip() or rng.random() < 0.5 else "")
        raw += f"Content-Disposition: {disposition}\r\n" if disposition else ""
        message = email.message_from_bytes((raw + "\r\nbody\r\n").encode("utf-8", "surrogateescape"),
                                           policy=email.policy.compat32)
        assert content_fields(message) == content_fields_parsed(message), repr(raw)
        fast += disposition is None and _PLAIN_CONTENT_TYPE.fullmatch(value) is not None
    assert fast > 100  # the comparison covers the fast path, not only the fallback
