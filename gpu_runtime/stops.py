"""``stop`` strings: generation ends where the text first contains one, which is cut off.

While streaming, text that could still become a stop string is held back, so a client never
receives the start of a stop string that the next token completes.
"""

from __future__ import annotations

from typing import Any

MAX_STOPS = 4  # as OpenAI's API


class StopError(ValueError):
    pass


def parse_stop(value: Any) -> tuple[str, ...]:
    """The request's ``stop`` field as a tuple of non-empty strings."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise StopError("stop must be a string or a list of strings")
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOPS:
        raise StopError(f"stop takes at most {MAX_STOPS} strings, got {len(stops)}")
    return tuple(stops)


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, delta: str, final: bool = False) -> str:
        """The text that may be sent now; sets ``stopped`` once a stop string appears."""
        if self.stopped:
            return ""
        self.text += delta
        search_from = max(0, self.sent - self.longest + 1)
        hits = [i for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            return self._send(len(self.text))
        if final:
            return self._send(len(self.text))
        return self._send(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _send(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out = self.text[self.sent : upto]
        self.sent = upto
        return out
