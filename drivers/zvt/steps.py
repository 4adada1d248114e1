"""A ZVT exchange as steps on the line, and the two ways of carrying them.

The adapter writes each command's exchange once, as a generator that yields what it needs
from the line (:class:`Send` this APDU; :class:`Receive` the PT's next APDU, or ``None``
once ``until`` has passed) and is answered with what the line said, or has the line's error
(:class:`~drivers.base.DriverError`) thrown in at that step. The worker thread carries the
steps on its blocking links (:func:`follow_blocking`); :class:`LoopCommand` carries them on
the event loop over an open TCP line.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from drivers.base import DriverError
from drivers.zvt.framing import Apdu
from drivers.zvt.session import Link, TcpLink

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send:
    """Put this APDU on the line."""

    apdu: bytes


@dataclass(frozen=True, slots=True)
class Receive:
    """The PT's next APDU, or None once ``until`` (the link's clock) has passed."""

    until: float


Step: TypeAlias = Send | Receive


def follow_blocking(link: Link, steps: Generator[Step, Apdu | None, T]) -> T:
    """Carry the exchange to its end on a blocking link (the worker thread)."""
    try:
        step = next(steps)
        while True:
            try:
                if isinstance(step, Send):
                    link.send(step.apdu)
                    reply = None
                else:
                    reply = link.receive(step.until)
            except DriverError as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(reply)
    except StopIteration as done:
        value: T = done.value
        return value


class LoopCommand(Generic[T]):
    """An exchange carried on the event loop over a TCP line: :meth:`send` puts the command
    on the line, :meth:`finish` follows the rest to the exchange's end. No thread hands
    anything over: the command leaves when the caller says, and the ending is the loop's
    as soon as the PT's last message is read."""

    def __init__(self, link: TcpLink, steps: Generator[Step, Apdu | None, T]) -> None:
        self._link = link
        self._steps = steps
        self._step: Step | None = None
        self._ending: tuple[T] | None = None
        """The exchange's value, once it has ended."""

    async def send(self) -> None:
        """Follow the exchange up to its first wait for the PT (the command is out)."""
        await self._follow(to_first_wait=True)

    async def finish(self) -> T:
        await self._follow(to_first_wait=False)
        assert self._ending is not None
        return self._ending[0]

    async def _follow(self, *, to_first_wait: bool) -> None:
        if self._ending is not None:
            return
        steps, link = self._steps, self._link
        try:
            step = next(steps) if self._step is None else self._step
            while not (to_first_wait and isinstance(step, Receive)):
                try:
                    if isinstance(step, Send):
                        await link.send_on_loop(step.apdu)
                        reply = None
                    else:
                        reply = await link.receive_on_loop(step.until)
                except DriverError as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(reply)
            self._step = step
        except StopIteration as done:
            self._ending = (done.value,)
        except BaseException:  # raised by the exchange, or the caller cancelled: it is over
            steps.close()
            raise
