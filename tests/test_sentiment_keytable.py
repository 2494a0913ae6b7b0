"""plugins/sentiment/keytable.py: the hash table the Chinese model looks its n-grams up in."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.sentiment.keytable import KeyTable


def test_lookup_finds_every_key_and_nothing_else() -> None:
    rng = np.random.default_rng(7)
    keys = np.unique(rng.integers(1, 2**63, 5000, dtype=np.uint64))
    rows = rng.permutation(len(keys))
    table = KeyTable(keys, rows)
    expected = dict(zip(keys.tolist(), rows.tolist(), strict=True))
    absent = rng.integers(1, 2**63, 5000, dtype=np.uint64)
    absent = absent[~np.isin(absent, keys)]
    queries = rng.permutation(np.concatenate([keys, absent, keys[:100]]))  # repeats too
    found_rows, found = table.lookup(queries)
    assert found.tolist() == [int(q) in expected for q in queries.tolist()]
    assert found_rows[found].tolist() == [expected[int(q)] for q in queries[found].tolist()]
    assert (found_rows[~found] == -1).all()
    assert [table.get(int(q)) for q in queries[:300].tolist()] == [expected.get(int(q)) for q in queries[:300].tolist()]
    assert len(table) == len(keys)


def test_keys_sharing_a_home_slot_are_all_found() -> None:
    """Keys that hash to the same slot walk on to the next free ones; a look-up walks the same way."""
    probe = KeyTable(np.arange(1, 7, dtype=np.uint64), np.arange(6))  # a table of the same size
    homes = probe._home(np.arange(1, 200_000, dtype=np.uint64))
    crowded = np.flatnonzero(homes == homes[0])[:6] + 1  # six keys with the same home slot
    table = KeyTable(crowded.astype(np.uint64), np.arange(6))
    assert table._probes == 6  # one round per key: each found the slots before it taken
    found_rows, found = table.lookup(crowded.astype(np.uint64)[::-1])
    assert found.all() and found_rows.tolist() == [5, 4, 3, 2, 1, 0]


def test_items_are_the_keys_in_order_with_their_rows() -> None:
    table = KeyTable(np.array([30, 10, 20], np.uint64), np.array([2, 0, 1]))
    keys, rows = table.items()
    assert keys.tolist() == [10, 20, 30] and rows.tolist() == [0, 1, 2]
    empty = KeyTable(np.zeros(0, np.uint64), np.zeros(0, np.intp))
    assert len(empty) == 0 and empty.get(5) is None
    assert empty.lookup(np.array([5], np.uint64))[1].tolist() == [False]


@pytest.mark.parametrize(
    ("keys", "rows"),
    [([1, 1], [0, 1]), ([0, 2], [0, 1]), ([1, 2], [0, -1])],
    ids=["duplicate key", "zero key", "negative row"],
)
def test_bad_keys_are_refused(keys: list[int], rows: list[int]) -> None:
    with pytest.raises(ValueError, match="unique and non-zero"):
        KeyTable(np.array(keys, np.uint64), np.array(rows))
