"""The gateway's SMTP listener doing only the first stages of its work, for ``bench.email.stages``.

    python bench/email/stage_server.py PORT STAGE SPOOL_DIR

STAGE: ``dialogue`` (answer 250 at once), ``spool`` (250 once the message is
in a durable spool, as the gateway does) or ``parse`` (that, then the parse
asked of the parser process, one message at a time).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateways.core.eventloop import run
from gateways.email.parsing import ParserProcess
from gateways.email.protocol import Envelope, RecipientPolicy
from gateways.email.smtp import InboundHandler, start_listener
from gateways.email.spool import GroupCommit, Spool, SpoolEntry, new_id

STAGES = ("dialogue", "spool", "parse")


async def main(port: int, stage: str, spool_dir: Path) -> None:
    spool = Spool(spool_dir)
    spool.open()
    writer = GroupCommit(spool)
    parser = ParserProcess()
    if stage == "parse":
        await parser.start()

    async def accept(raw: bytes, envelope: Envelope) -> str:
        if stage == "dialogue":
            return "250 2.0.0 OK"
        await writer.write(SpoolEntry(new_id(), envelope.as_dict(), [], raw))
        if stage == "parse":
            parser.parse(raw)  # leaves after the 250 is written, as the gateway's (which batches a linger's)
        return "250 2.0.0 OK"

    handler = InboundHandler(RecipientPolicy(["demo.local"], []), accept, max_recipients=100)
    server = await start_listener(
        "127.0.0.1", port, handler, hostname="stage.test", max_message_size=10 * 1024 * 1024, timeout=300,
        max_connections=100, tls=None, require_starttls=False, authenticator=None, auth_required=False)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[2] not in STAGES:
        raise SystemExit(__doc__)
    run(main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
