"""The floor of a ZVT lane over TCP: what any Python daemon pays for one card payment on a
ZVT terminal, measured beside the daemon by ``bench/terminal.py --lane zvt``.

A bare aiohttp app (``bench/floor_app.py``, uvloop) holding one TCP connection to the
terminal, registered once at start with the daemon's config byte (so the PT sends the same
intermediate status and receipt lines to acknowledge). ``POST /pay`` commits one row to
SQLite (WAL, ``synchronous=FULL``) before the Authorisation goes out, follows the exchange
to Completion or Abort (acknowledging every message of the PT), commits the result and
answers with it in the same request. No auth, idempotency, audit, state table, events,
long-poll or worker thread, and its commits run on the event loop's own thread: a daemon
must not block its loop on the disk, so this is below what a daemon can reach, by the two
thread hand-offs of each commit. The bench drives it with the same register and simulator as
the daemon, so ``overhead beyond the simulator`` means the same thing for both.

    python -m bench.terminal_floor --port P --terminal tcp://127.0.0.1:PORT --db PATH
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable

from bench.floor_app import serve
from drivers.zvt import messages as m
from drivers.zvt.framing import Apdu, ApduReader

COMPLETION = (0x06, 0x0F)
ABORT = (0x06, 0x1E)
STATUS_INFORMATION = (0x04, 0x0F)


class Line:
    """The terminal's TCP connection: APDUs out, APDUs in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.frames = reader, writer, ApduReader()

    async def receive(self) -> Apdu:
        while (apdu := self.frames.next_apdu()) is None:
            chunk = await self.reader.read(4096)
            if not chunk:
                raise ConnectionError("the terminal closed the line")
            self.frames.feed(chunk)
        return apdu

    async def command(self, apdu: bytes) -> str:
        """Send one command and follow it to its end: ``approved``, ``declined`` or
        ``refused`` (``84 xx``: nothing was done)."""
        self.writer.write(apdu)
        result: int | None = None
        while True:
            answer = await self.receive()
            if answer.cls == 0x80:  # 80 00 00: accepted
                continue
            if answer.cls == 0x84:
                return "refused"
            self.writer.write(m.ACK_APDU)
            kind = (answer.cls, answer.instr)
            if kind == STATUS_INFORMATION:
                status = m.decode_pt(answer)
                assert isinstance(status, m.StatusInformation)
                result = status.result_code
            elif kind == COMPLETION:
                return "approved" if result in (0, None) else "declined"
            elif kind == ABORT:
                return "declined"


async def main(args: argparse.Namespace) -> None:
    host, _, port = args.terminal.removeprefix("tcp://").rpartition(":")
    line = Line(*await asyncio.open_connection(host, int(port)))
    if await line.command(m.registration(args.password, "EUR")) != "approved":
        raise SystemExit("the terminal refused the Registration")

    def exchange(pid: str, amount: int, currency: str) -> Awaitable[str]:
        return line.command(m.authorisation(amount, currency))

    await serve(args.port, args.db, exchange)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--terminal", required=True, help="tcp://HOST:PORT of the ZVT terminal")
    p.add_argument("--password", default="000000")
    p.add_argument("--db", required=True)
    import uvloop

    uvloop.run(main(p.parse_args()))
