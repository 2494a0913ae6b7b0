"""A read-only hash table from non-zero 64-bit integer keys to rows, looked up a whole array of keys
at a time with numpy.

Why: the Chinese model looks up every character bigram and trigram of a fetch's texts (~16,000
keys per 200 texts) among ~245,000 known ones. A binary search (argsort, then searchsorted in the
sorted keys) took ~7 µs per text. Linear probing at a load factor of at most 1/2, looked up in two
vectorized steps (home slots, then the rest of the walk for the keys whose home holds another
key): ~3.2 µs per text, for 12 bytes per slot (6 MB for the shipped Chinese model; a load of 1/4
saved another 0.3 µs per text for 6 MB more). A single text's few keys cost ~24 µs, the numpy
calls' fixed cost (the binary search: ~10). The English model's word pairs (~4,600 keys per 200
texts among ~40,000) went from 93 to 46 ns a key the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of key * 2**64 / phi
_MASK64 = (1 << 64) - 1
_EMPTY = -1


class KeyTable:
    """Keys (non-zero, unique) to rows (non-negative int32)."""

    def __init__(self, keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.integer[Any]]) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        rows = np.asarray(rows, dtype=np.int64)
        if keys.shape != rows.shape:
            raise ValueError(f"{len(keys)} keys but {len(rows)} rows")
        if len(keys) and (not keys.all() or rows.min() < 0 or len(np.unique(keys)) != len(keys)):
            raise ValueError("keys must be unique and non-zero, rows non-negative")
        self._bits = max(4, int(len(keys) * 2 - 1).bit_length())  # size >= 2 x the keys
        size = 1 << self._bits
        self._keys = np.zeros(size, np.uint64)
        self._rows = np.full(size, _EMPTY, np.int32)
        # Insert all keys at once, round by round: a key whose slot is taken (before this round,
        # or by an earlier key of the same slot in it) moves one slot on. Slots are never emptied,
        # so a look-up that walks from a key's home slot to the first empty one passes its key.
        slots = self._home(keys)
        pending = np.arange(len(keys))
        self._probes = 0  # the longest walk: look-ups stop after this many steps
        while len(pending):
            free = self._rows[slots[pending]] == _EMPTY
            taken, first = np.unique(slots[pending[free]], return_index=True)
            placed = pending[free][first]
            self._keys[taken] = keys[placed]
            self._rows[taken] = rows[placed]
            pending = np.setdiff1d(pending, placed, assume_unique=True)
            slots[pending] = (slots[pending] + 1) & (size - 1)
            self._probes += 1
        self._size = len(keys)

    def __len__(self) -> int:
        return self._size

    def _home(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        with np.errstate(over="ignore"):  # the product is meant to wrap around
            hashed = keys * np.uint64(_GOLDEN)
        return (hashed >> np.uint64(64 - self._bits)).astype(np.intp)

    def lookup(self, keys: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """(rows, found) of an array of keys; a row is -1 where its key is not in the table.

        Two steps whatever the keys: their home slots, then, for the keys whose home holds
        another key, all the further slots of the longest walk at once (a key is never behind an
        empty slot on its walk, and is in the table at most once, so a match anywhere on the walk
        is its slot and no match means it is absent)."""
        slots = self._home(keys)
        home_rows = self._rows[slots].astype(np.intp)
        hit = self._keys[slots] == keys
        found_rows = np.where(hit, home_rows, _EMPTY)
        walking = np.flatnonzero(found_rows < home_rows)  # not this key, but some key: walk on
        if len(walking) and self._probes > 1:
            mask = len(self._rows) - 1
            walk = (slots[walking, None] + np.arange(1, self._probes)) & mask
            match = self._keys[walk] == keys[walking, None]
            present = match.any(axis=1)
            at = walk[np.flatnonzero(present), match[present].argmax(axis=1)]
            found_rows[walking[present]] = self._rows[at]
        return found_rows, found_rows >= 0

    def get(self, key: int) -> int | None:
        """The row of one key, None when it is not in the table."""
        slot = ((key * _GOLDEN) & _MASK64) >> (64 - self._bits)
        mask = len(self._rows) - 1
        for _ in range(self._probes):
            row = int(self._rows[slot])
            if row == _EMPTY:
                return None
            if int(self._keys[slot]) == key:
                return row
            slot = (slot + 1) & mask
        return None

    def items(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.intp]]:
        """Every (key, row), ordered by key."""
        used = self._rows != _EMPTY
        keys = self._keys[used]
        order = np.argsort(keys, kind="stable")
        return keys[order], self._rows[used][order].astype(np.intp)
