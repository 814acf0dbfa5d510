"""Ready UDP answers of one snapshot, keyed by the question with its name case-folded.

Resolvers vary the letter case of names they ask (DNS 0x20), so a key on the raw bytes let one
name fill the cache once per spelling. Here every spelling shares one entry, and the client's own
spelling is spliced back into the question of the answer it gets. A name with several addresses
keeps one answer per rotation (at most MAX_ROTATIONS), each rendered the first time it is due,
so the round robin survives. The cache is bounded in entries and bytes.
"""

from __future__ import annotations

import threading

MAX_ROTATIONS = 8
MAX_ENTRIES = 4096
MAX_BYTES = 4 << 20

HEADER = 12


def question_end(data: bytes) -> int | None:
    """The offset just past the question's name, or None when the name is not plain labels."""
    i, end = HEADER, len(data)
    while i < end:
        length = data[i]
        if length == 0:
            return i + 1
        if length > 63:
            return None
        i += length + 1
    return None


def cache_key(data: bytes, qend: int) -> bytes:
    """The query after its ID, with the question's name in lower case."""
    return data[2:HEADER] + data[HEADER:qend].lower() + data[qend:]


def splice(data: bytes, body: bytes, qend: int) -> bytes:
    """A cached answer (without its ID) for this query: the query's ID and its own spelling of
    the name (same length, so every offset in the answer stays right)."""
    return data[:2] + body[:HEADER - 2] + data[HEADER:qend] + body[qend - 2:]


class Entry:
    __slots__ = ("bodies", "turn")

    def __init__(self, rotations: int):
        self.bodies: list[bytes | None] = [None] * max(1, min(rotations, MAX_ROTATIONS))
        self.turn = 0

    def take_turn(self) -> int:
        """The rotation due now (and move on to the next)."""
        turn = self.turn
        self.turn = turn + 1
        return turn % len(self.bodies)


class AnswerCache:
    def __init__(self):
        self.entries: dict[bytes, Entry] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def entry(self, key: bytes, rotations: int) -> Entry:
        with self._lock:
            found = self.entries.get(key)
            if found is None:
                if len(self.entries) >= MAX_ENTRIES:
                    self._reset()
                found = self.entries[key] = Entry(rotations)
            return found

    def fill(self, entry: Entry, rotation: int, body: bytes) -> None:
        with self._lock:
            if entry.bodies[rotation] is None:
                entry.bodies[rotation] = body
                self._bytes += len(body)
                if self._bytes > MAX_BYTES:
                    self._reset()

    def _reset(self) -> None:
        self.entries = {}    # readers hold the old dict; a swap, never a mutation under them
        self._bytes = 0
