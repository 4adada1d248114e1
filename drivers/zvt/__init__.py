"""ZVT terminals (the DACH ECR interface) over TCP or RS-232.

Facts (``docs/facts/zvt.md``, and the specification's summary tables as the ECR
libraries ecrterm and Portalum.Zvt publish them; no code taken): see
:mod:`drivers.zvt.framing` (lengths, DLE framing, CRC-16/KERMIT) and
:mod:`drivers.zvt.messages` (APDUs, BMPs, TLV, result codes).

A lane's life (:class:`~drivers.zvt.adapter.ZvtTerminal`):

- open: connect (``tcp://host:port``, or ``serial:///dev/…`` at 9600 8N2), then
  Registration (``06 00``: password, config byte 0xBE — the register prints the receipts
  sent as Print Line, the PT sends intermediate status, its own keys start nothing —
  and the store's currency); again after every reconnect;
- heartbeat: Status enquiry (``05 01``) → ``80 00 00`` and Completion: online; no answer:
  offline (the line is dropped and opened again on the next probe);
- sale: Authorisation (``06 01``, BMP 04 amount, 49 currency) → ``80 00 00``; then the PT
  is master: every Intermediate status, Status-Information, Print Line/Text-Block is
  acknowledged with ``80 00 00`` until Completion (``06 0F``) or Abort (``06 1E``);
- refund ``06 31``, reversal (void) ``06 30`` with the sale's receipt number, end of day
  ``06 50`` (totals from BMP 04 and BMP 60), Repeat receipt ``06 20``;
- cancel: Abort command ``06 B0`` while the PT is master; ``80 00 00`` from the PT: it
  aborts (then ``06 1E 6C``); ``84 xx``, or the transaction ending first: too late
  (:class:`~drivers.base.CancelTooLate`).

The money rule:

- ``approved`` only after a Status-Information with result code 00, followed by
  Completion; the amount and currency it names are handed on, so that the daemon turns a
  differing figure into ``unknown``;
- Abort: ``canceled`` for result 6C (abort key, timeout, the register's cancel),
  ``declined`` for any other code, with the code and its text;
- ``84 xx`` to the command: nothing started, :class:`~drivers.base.NothingSent` (failed);
- anything lost after the command went out (no ``80 00 00``, the line dropped, no
  Completion after an approval): ``unknown``. The lane then asks the PT with Repeat
  receipt before it takes another transaction (:meth:`ZvtTerminal.recover`).

Receipt lines are kept with the payment; any PAN-like digit run in them is cut to its
last four digits before anything else sees it (:mod:`drivers.zvt.receipt`), and the card
number of a Status-Information is cut to its last four digits in the decoder.

Threading: one worker thread per terminal connects, registers, probes and runs the
commands on a serial line (blocking reads in slices of ``poll_interval``). On an open TCP
line the event loop runs the transactions themselves (sale, refund, reversal) while the
worker is idle: one exchange, :meth:`ZvtTerminal._exchange`, says what each message means,
and the worker and the loop only carry its steps (:mod:`drivers.zvt.steps`), so that the
Authorisation leaves the moment the payment is durable and the ending needs no thread
hand-off. The terminal side is :mod:`drivers.simulators.zvt`.
"""
