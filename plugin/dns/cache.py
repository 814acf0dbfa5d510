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
    """Where the case-folded part of the key ends: just past the first zero byte after the
    header, which ends the question's name unless a label holds a zero byte. Any offset would
    keep splice() right, as long as both queries' offsets come from this same function (equal
    keys mean identical bytes after it); this one is found in C, on the hot path."""
    end = data.find(b"\0", HEADER)
    return end + 1 if end > HEADER else None


def cache_key(data: bytes, qend: int) -> bytes:
    """The query after its ID, with the question's name in lower case."""
    return data[2:HEADER] + data[HEADER:qend].lower() + data[qend:]


def splice(data: bytes, body: bytes, qend: int) -> bytes:
    """A cached answer (without its ID) for this query: the query's ID and its own spelling of
    the name (same length, so every offset in the answer stays right)."""
    return data[:2] + body[: HEADER - 2] + data[HEADER:qend] + body[qend - 2 :]


class Entry:
    """One question, case-folded: its rotations as first rendered."""

    __slots__ = ("bodies", "turn")

    def __init__(self, rotations: int):
        self.bodies: list[bytes | None] = [None] * max(1, min(rotations, MAX_ROTATIONS))
        self.turn = 0

    def take_turn(self) -> int:
        """The rotation due now (and move on to the next)."""
        turn = self.turn
        self.turn = turn + 1
        return turn % len(self.bodies)


class Spelling:
    """One exact spelling of a question: the entry's rotations with this spelling spliced in,
    so that a repeated question costs one dict lookup and no splicing."""

    __slots__ = ("entry", "bodies")

    def __init__(self, entry: Entry):
        self.entry = entry
        self.bodies: list[bytes | None] = [None] * len(entry.bodies)


class AnswerCache:
    def __init__(self):
        self.exact: dict[bytes, Spelling] = {}  # the query after its ID, as it came
        self.entries: dict[bytes, Entry] = {}  # cache_key(): case-folded
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

    def fill(self, entry: Entry, rotation: int, body: bytes, query: bytes, qend: int) -> None:
        """Keep a rendered answer (without its ID) for this rotation, if its question has the
        shape of the query's (so that other spellings can be spliced in), and as this query's
        own spelling."""
        if len(body) < qend - 2 or body[HEADER - 2 : qend - 2].lower() != query[HEADER:qend].lower():
            return
        with self._lock:
            if entry.bodies[rotation] is None:
                entry.bodies[rotation] = body
                self._count(len(body))
        self.spell(query, entry, rotation, body)

    def spell(self, query: bytes, entry: Entry, rotation: int, body: bytes) -> None:
        """Remember the answer for this exact spelling and rotation."""
        with self._lock:
            spelling = self.exact.get(query[2:])
            if spelling is None or spelling.entry is not entry:
                if len(self.exact) >= MAX_ENTRIES:
                    self._reset()
                spelling = self.exact[query[2:]] = Spelling(entry)
            if rotation < len(spelling.bodies) and spelling.bodies[rotation] is None:
                spelling.bodies[rotation] = body
                self._count(len(body))

    def _count(self, size: int) -> None:
        self._bytes += size
        if self._bytes > MAX_BYTES:
            self._reset()

    def _reset(self) -> None:
        self.exact, self.entries = {}, {}  # readers hold the old dicts: a swap, never a mutation under them
        self._bytes = 0
