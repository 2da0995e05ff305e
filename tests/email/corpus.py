"""Malformed and hostile messages: each must be accepted, parsed without a crash,
and delivered with its raw bytes intact."""

from __future__ import annotations

CRLF = b"\r\n"


def _msg(*lines: bytes) -> bytes:
    return CRLF.join(lines) + CRLF


CORPUS: dict[str, bytes] = {
    "broken_boundary": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: broken boundary",
        b"Content-Type: multipart/mixed; boundary=\"declared\"", b"",
        b"--other", b"Content-Type: text/plain", b"", b"the boundary never appears", b"--other--"),
    "unterminated_multipart": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: unterminated",
        b"Content-Type: multipart/alternative; boundary=b1", b"",
        b"--b1", b"Content-Type: text/plain", b"", b"plain part", b"--b1",
        b"Content-Type: text/html", b"", b"<p>html part, no closing boundary"),
    "unknown_charset": _msg(
        b"From: a@example.test", b"To: inbox@demo.local",
        b"Subject: =?x-klingon?q?qapla=E9?=",
        b"Content-Type: text/plain; charset=x-klingon-42", b"", b"caf\xe9 au lait"),
    "8bit_headers": _msg(
        b"From: J\xc3\xb6rg M\xc3\xbcller <joerg@example.test>", b"To: inbox@demo.local",
        b"Subject: Gr\xfc\xdfe aus K\xf6ln", b"X-Latin1: \xe9t\xe9", b"", b"body"),
    "nested_multiparts": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: nested",
        b"Content-Type: multipart/mixed; boundary=outer", b"",
        b"--outer", b"Content-Type: multipart/alternative; boundary=inner", b"",
        b"--inner", b"Content-Type: text/plain; charset=utf-8", b"", b"inner plain \xe2\x9c\x93",
        b"--inner", b"Content-Type: multipart/related; boundary=deep", b"",
        b"--deep", b"Content-Type: text/html", b"", b"<b>deep html</b>",
        b"--deep", b"Content-Type: image/png", b"Content-Transfer-Encoding: base64", b"", b"iVBORw0KGgo=",
        b"--deep--", b"--inner--",
        b"--outer", b"Content-Type: message/rfc822", b"",
        b"Subject: forwarded", b"From: b@example.test", b"", b"forwarded body",
        b"--outer--"),
    "huge_headers": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: huge headers",
        b"X-Huge: start", *[b"  continuation " + str(i).encode() * 40 for i in range(600)],
        *[b"X-Many-" + str(i).encode() + b": value" for i in range(500)], b"", b"body after huge headers"),
    "headers_only": _msg(b"From: a@example.test", b"To: inbox@demo.local", b"Subject: no body"),
    "empty_body": _msg(b"From: a@example.test", b"To: inbox@demo.local", b"Subject: empty", b""),
    "empty_message": b"",
    "non_utf8_text": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: lying charset",
        b"Content-Type: text/plain; charset=utf-8", b"", b"na\xefve caf\xe9 \xff\xfe"),
    "attachments_without_names": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: nameless",
        b"Content-Type: multipart/mixed; boundary=zz", b"",
        b"--zz", b"Content-Type: text/plain", b"", b"see attached",
        b"--zz", b"Content-Type: application/octet-stream", b"Content-Disposition: attachment",
        b"Content-Transfer-Encoding: base64", b"", b"AAECAwQF",
        b"--zz", b"Content-Type: application/pdf", b"", b"%PDF-1.4 raw",
        b"--zz--"),
    "bad_base64": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: bad base64",
        b"Content-Type: application/octet-stream; name=x.bin", b"Content-Transfer-Encoding: base64", b"",
        b"!!!! not base64 at all ====", b"QUJD"),
    "bad_encoded_words": _msg(
        b"From: =?utf-8?b?!!!broken?= <a@example.test>", b"To: inbox@demo.local",
        b"Subject: =?utf-8?q?ok?= =?nope?b?SGVsbG8=?= =?utf-8?b?8J+Ygg==?=", b"", b"body"),
    "nul_bytes": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: nul", b"",
        b"before\x00after", b"\x00\x00\x00"),
    "deep_nesting": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: deep",
        b"Content-Type: multipart/mixed; boundary=d0", b"",
        *[line for i in range(1, 60) for line in (
            b"--d" + str(i - 1).encode(), b"Content-Type: multipart/mixed; boundary=d" + str(i).encode(), b"")],
        b"--d59", b"Content-Type: text/plain", b"", b"bottom"),
    "garbage_header_lines": _msg(
        b"From: a@example.test", b"this line has no colon", b": empty name", b"To: inbox@demo.local",
        b"Subject: garbage", b"", b"body"),
    "broken_quoted_printable": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: qp",
        b"Content-Type: text/plain; charset=iso-8859-1", b"Content-Transfer-Encoding: quoted-printable", b"",
        b"caf=E9 =ZZ broken soft break=", b"end"),
    "rfc2231_filename": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: 2231",
        b"Content-Type: multipart/mixed; boundary=q", b"",
        b"--q", b"Content-Type: application/octet-stream",
        b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.txt", b"", b"data",
        b"--q", b"Content-Type: text/plain; name*=x-unknown''%FF%FE", b"Content-Disposition: attachment", b"",
        b"weird name",
        b"--q--"),
    "missing_subtype": _msg(
        b"From: a@example.test", b"To: inbox@demo.local", b"Subject: subtype",
        b"Content-Type: text", b"Content-Transfer-Encoding: x-unknown", b"", b"body"),
}
