"""The open event streams: how many per token and in all, and a way to end a sign-in's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Stream:
    token_id: int
    session: str | None  # the sign-in's session digest, for a stream of the status page
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class StreamRegistry:
    """The open streams: their count per token and in all, and a way to end them."""

    def __init__(self, per_token: int, total: int) -> None:
        self.per_token = per_token
        self.total = total
        self._open: dict[Stream, None] = {}
        self._per_token: dict[int, int] = {}

    def open(self, token_id: int, session: str | None) -> Stream | None:
        """A new stream for this token, or None when it (or the daemon) has its maximum."""
        if self._per_token.get(token_id, 0) >= self.per_token or \
                len(self._open) >= self.total:
            return None
        stream = Stream(token_id, session)
        self._open[stream] = None
        self._per_token[token_id] = self._per_token.get(token_id, 0) + 1
        return stream

    def close(self, stream: Stream) -> None:
        if self._open.pop(stream, False) is False:
            return
        left = self._per_token[stream.token_id] - 1
        if left:
            self._per_token[stream.token_id] = left
        else:
            del self._per_token[stream.token_id]

    def end_session(self, session: str) -> int:
        """End the streams of a sign-in that signed out; how many there were."""
        ended = [s for s in self._open if s.session == session]
        for stream in ended:
            stream.ended.set()
        return len(ended)

    def __len__(self) -> int:
        return len(self._open)
