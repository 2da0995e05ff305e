"""Django's send_mail()/EmailMessage through GatewayEmailBackend, a real email gateway
(file:// relay writing a Maildir) and real Redis."""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path

import pytest
from django.core.mail import EmailMultiAlternatives, get_connection, send_mail

from consumers.mail import GatewayEmailError
from consumers.send import email_send

pytestmark = pytest.mark.e2e


def delivered(maildir: Path, count: int, timeout: float = 30.0) -> list[email.message.EmailMessage]:
    """The messages the relay wrote, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while len(files := list(maildir.glob("*")) if maildir.exists() else []) < count:
        assert time.monotonic() < deadline, f"{len(files)} of {count} messages delivered"
        time.sleep(0.05)
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]


def test_send_mail_and_a_full_email_message_arrive_as_django_built_them(email_gateway):
    _config, maildir = email_gateway
    assert send_mail("Plain", "just text", "app@demo.local", ["one@example.test"]) == 1
    message = EmailMultiAlternatives(
        "Report ✓", "the text part", "App <app@demo.local>", ["to@example.test"],
        cc=["cc@example.test"], bcc=["hidden@example.test"], reply_to=["answers@demo.local"],
        headers={"X-Campaign": "q4", "List-Unsubscribe": "<mailto:stop@demo.local>"},
    )
    message.attach_alternative("<p>the <b>html</b> part</p>", "text/html")
    message.attach("report.csv", "a,b\n1,2\n", "text/csv")
    assert message.send() == 1

    by_subject = {m["Subject"]: m for m in delivered(maildir, 2)}
    plain, full = by_subject["Plain"], by_subject["Report ✓"]
    assert plain["Subject"] == "Plain" and plain["To"] == "one@example.test"
    assert plain["Return-Path"] == "<app@demo.local>"
    assert plain.get_body(("plain",)).get_content().strip() == "just text"

    assert full["Subject"] == "Report ✓"
    assert full["From"] == "App <app@demo.local>"
    assert (full["To"], full["Cc"], full["Reply-To"]) == ("to@example.test", "cc@example.test",
                                                           "answers@demo.local")
    assert full["X-Campaign"] == "q4" and full["List-Unsubscribe"] == "<mailto:stop@demo.local>"
    assert full["Message-ID"]
    assert full.get_body(("plain",)).get_content().strip() == "the text part"
    assert full.get_body(("html",)).get_content().strip() == "<p>the <b>html</b> part</p>"
    (attachment,) = full.iter_attachments()
    assert (attachment.get_filename(), attachment.get_content_type()) == ("report.csv", "text/csv")
    assert attachment.get_content() == "a,b\n1,2\n"
    # Bcc: in the envelope (the relay's Delivered-To lines), never in the message.
    assert "Bcc" not in full and b"hidden@example.test" not in full.as_bytes().split(b"\n\n", 1)[1]
    assert sorted(full.get_all("Delivered-To")) == ["cc@example.test", "hidden@example.test", "to@example.test"]
    assert full["Return-Path"] == "<app@demo.local>"


def test_waiting_backend_reports_delivery_and_failures(email_gateway):
    _config, maildir = email_gateway
    connection = get_connection(wait=True, timeout=20)
    assert send_mail("Waited", "body", "app@demo.local", ["x@example.test"], connection=connection) == 1
    (waited,) = delivered(maildir, 1)
    assert waited["Subject"] == "Waited"

    # A From the gateway does not allow: email.failed, raised or counted as not sent.
    with pytest.raises(GatewayEmailError, match="is not allowed"):
        send_mail("Nope", "body", "someone@elsewhere.test", ["x@example.test"], connection=connection)
    quiet = get_connection(wait=True, timeout=20, fail_silently=True)
    assert send_mail("Nope", "body", "someone@elsewhere.test", ["x@example.test"], connection=quiet) == 0
    assert get_connection(fail_silently=True).send_messages([]) == 0


def test_email_send_helper_returns_the_id_or_the_result(email_gateway):
    _config, maildir = email_gateway
    message_id = email_send(sender="app@demo.local", to=["h@example.test"], subject="Helper", text="hi")
    assert isinstance(message_id, str)
    result = email_send(sender="app@demo.local", to="h2@example.test", subject="Helper 2", text="hi",
                        wait=True, timeout=20)
    assert result["type"] == "email.sent" and result["recipients"] == ["h2@example.test"]
    assert {m["Subject"] for m in delivered(maildir, 2)} == {"Helper", "Helper 2"}
