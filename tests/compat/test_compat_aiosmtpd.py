"""gateways/email/compat_aiosmtpd.py: the aiosmtpd internals it touches are still
there and still do what it relies on, in the installed aiosmtpd."""

from __future__ import annotations

import aiosmtpd
import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP

from gateways.email import compat_aiosmtpd
from gateways.email.compat_aiosmtpd import PathParserHook

UPGRADED = (f"gateways/email/compat_aiosmtpd.py was checked against aiosmtpd 1.4.6; the installed "
            f"{aiosmtpd.__version__} changed what it relies on")


class Handler:
    def __init__(self) -> None:
        self.calls: list = []

    async def handle_DATA(self, server, session, envelope):
        self.calls.append(envelope)
        return "250 seen"


@pytest.mark.parametrize("command, uses", [
    # The stock commands use the members the adapter reads or overrides, so the
    # gateway's session, which replaces or mimics them, behaves as the stock one.
    ("smtp_MAIL", {"_getaddr"}),
    ("smtp_RCPT", {"_getaddr"}),
    ("smtp_DATA", {"_reader", "_writer", "_decode_data", "_handle_hooks", "_set_post_data_state",
                   "_call_handler_hook"}),
])
def test_the_stock_commands_still_use_the_members_the_adapter_relies_on(command, uses):
    missing = uses - set(getattr(SMTP, command).__code__.co_names)
    assert not missing, f"{UPGRADED}: SMTP.{command} no longer uses {sorted(missing)}"


async def test_the_private_members_behave_as_the_adapter_expects():
    handler = Handler()
    session = SMTP(handler)
    assert compat_aiosmtpd.hands_raw_data(session), f"{UPGRADED}: _decode_data/_handle_hooks"
    assert not compat_aiosmtpd.hands_raw_data(SMTP(handler, decode_data=True)), f"{UPGRADED}: _decode_data"
    assert not compat_aiosmtpd.hands_raw_data(SMTP(object())), f"{UPGRADED}: _handle_hooks"
    compat_aiosmtpd.end_transaction(session)
    first = session.envelope
    assert first is not None and first.rcpt_tos == [], f"{UPGRADED}: _set_post_data_state gives no fresh envelope"
    assert await compat_aiosmtpd.call_data_hook(session) == "250 seen" and handler.calls == [first], \
        f"{UPGRADED}: _call_handler_hook('DATA') does not call handle_DATA"
    assert await compat_aiosmtpd.call_data_hook(SMTP(object())) is MISSING, f"{UPGRADED}: _call_handler_hook"
    compat_aiosmtpd.end_transaction(session)
    assert session.envelope is not first, f"{UPGRADED}: _set_post_data_state keeps the envelope"


@pytest.mark.parametrize("base", [SMTP, LMTP])
async def test_the_path_parser_hook_is_what_mail_and_rcpt_call(base):
    class Session(PathParserHook, base):
        def parse_path(self, arg):
            return "hooked", arg

    session = Session(Handler())
    assert session._getaddr("<a@b.test>") == ("hooked", "<a@b.test>"), f"{UPGRADED}: _getaddr"
    stock = base(Handler())
    assert PathParserHook.parse_path(session, "<a@b.test> SIZE=1") == stock._getaddr("<a@b.test> SIZE=1") \
        == ("a@b.test", "SIZE=1"), f"{UPGRADED}: SMTP._getaddr parses differently"
