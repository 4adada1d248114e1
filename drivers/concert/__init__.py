"""Ingenico Telium "Concert" E+ terminals over a serial, USB-serial or TCP line.

Sources (facts only, no code taken): PayXpert's "USB/RS232 - Specifications" and
"Concert V2/V3" pages, and the ECR-side libraries pyteliummanager (MIT) and pypostelium
(AGPL), summarised with byte vectors in ``docs/facts/concert.md``.

The line is opened with ``serial.serial_for_url``, so a device path (``/dev/ttyACM0``, a
pty, a ``/dev/serial/by-id`` link) and a ``socket://host:port`` URL both work. USB CDC-ACM
terminals speak 9600 8N1, native RS-232 ones 7E1 (:attr:`ConcertSettings.line`).

One transaction, host (this driver) and terminal::

    host ENQ            → terminal ACK            (no ACK: TerminalUnavailable, nothing sent)
    host request frame  → terminal ACK | NAK      (NAK: send again, bounded)
    host EOT
    … the customer pays (up to ``customer_timeout``) …
    terminal ENQ        → host ACK
    terminal answer     → host ACK | NAK          (NAK on a broken frame: sent again)
    terminal EOT

A sale opens its exchange early: :meth:`ConcertTerminal.prepare` (called while the
payment's ``in_progress`` row is being committed) sends the ENQ, which commits the terminal
to nothing, and holds the request frame; :meth:`ConcertTerminal.start` (the row is durable)
lets it go, :meth:`ConcertTerminal.abandon` (the row could not be written) sends EOT and
nothing else. A commit slower than ``hold_timeout`` closes the session (EOT) and opens a
new one for the frame, so the terminal never waits for a frame past its own timer.

The money rule: until the request frame was handed over the driver raises
:class:`~drivers.base.TerminalUnavailable`; from then on every ending is a
:class:`~drivers.base.TransactionResult`, and silence, a dropped line or garbage give
``Outcome.UNKNOWN``, never ``DECLINED``. A request frame that was written but neither
ACKed nor NAKed counts as handed over (the terminal may have taken it); only a request
that the terminal NAKed every time is "nothing sent". Status ``9`` ("not verified") is
``UNKNOWN`` too (see :mod:`drivers.concert.messages`).

E+ has no abort from the register (:meth:`ConcertTerminal.cancel` raises
:class:`~drivers.base.CancelNotSupported`) and cannot tell how a past transaction ended
(:meth:`ConcertTerminal.recover` returns ``None``).

Threading: pyserial blocks, so every line operation runs on one worker thread per terminal
(a single-thread executor), reading in slices of ``poll_interval`` seconds; the event loop
only awaits. Deadlines are read from the injectable :class:`sync.core.clock.Clock`, and every
timer is a setting, so tests use small ones (or a manual clock) and never wait long.

A card number from the answer is cut to its last four digits inside the decoder; nothing
here logs frame data.

Use::

    terminal = ConcertTerminal("lane-1", ConcertSettings(port="/dev/ttyACM0"))
    await terminal.open()                      # TerminalUnavailable if the port is missing
    result = await terminal.collect(TransactionRequest("pay-1", 1250, "EUR"))


Files: :mod:`drivers.concert.framing` (``STX data ETX LRC`` and the control bytes),
:mod:`drivers.concert.messages` (the E+ request and answer codecs),
:mod:`drivers.concert.session` (the settings and the line: a worker thread that speaks the
handshakes with bounded waits), :mod:`drivers.concert.adapter` (:class:`ConcertTerminal`,
the lane's :class:`~drivers.base.Terminal`). The terminal side is
:mod:`drivers.simulators.concert`.
"""
