"""The listener's fast parse of MAIL/RCPT paths gives exactly what aiosmtpd's own parse gives."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from gateways.email.smtp import GatewaySMTP, InboundHandler
from gateways.email.protocol import RecipientPolicy

PATHS = [
    "<you@example.test>", "<you@example.test> SIZE=2048", "<you@example.test> BODY=8BITMIME SMTPUTF8",
    " <you@example.test>", "<first.last+tag@mail.example.test>", "<a!#$%&'*+/=?^_`{|}~-b@x-y.test>",
    "<UPPER@Example.TEST>", "<you@localhost>", "<>", "<> SIZE=1", "you@example.test", "<you@example.test",
    "<\"quoted part\"@example.test>", "<you@[127.0.0.1]>", "<a..b@example.test>", "<.a@example.test>",
    "<a.@example.test>", "<you@example..test>", "<you@-x.test>", "<@relay.test:you@example.test>",
    "<you@example.test>>", "<you @example.test>", "<you@example.test> ", "<x" + "y" * 70 + "@example.test>",
    "<jöran@example.test>", "<you@exämple.test>", "", "<you(comment)@example.test>", "<you@example.test>\t SIZE=5",
    "<you@example.test> (comment) SIZE=5", "<you@example.test>(c)", "\t<you@example.test>", "\n<you@example.test>",
    "<you@example.test>\x0bSIZE=1", "<you@example.test>SIZE=1", "<you@sub.example.test> SIZE=1 (x)",
]


@pytest.mark.parametrize("local_part_limit", [0, 64])
@pytest.mark.parametrize("path", PATHS)
def test_fast_path_parse_matches_aiosmtpd(path, local_part_limit):
    gateway = GatewaySMTP(InboundHandler(RecipientPolicy(["example.test"], []), None, 10))
    stock = SMTP(InboundHandler(RecipientPolicy(["example.test"], []), None, 10))
    gateway.local_part_limit = stock.local_part_limit = local_part_limit
    assert gateway._getaddr(path) == stock._getaddr(path)
