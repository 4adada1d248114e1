"""Ids: the shape registers see, and the order SQLite's indexes get (edged/ids.py)."""

from __future__ import annotations

import re

from edged.ids import new_id

SHAPE = re.compile(r"pay_[a-z2-7]{16}")  # RFC 4648 base32, lower case: as ids always were


def test_ids_keep_their_shape_and_sort_by_the_time_they_were_made() -> None:
    moments = [1_700_000_000.0, 1_765_000_000.0, 1_765_000_000.01, 1_765_000_060.0,
               2_000_000_000.0, 4_000_000_000.0]
    made = [new_id("pay", t) for t in moments]
    assert all(SHAPE.fullmatch(i) for i in made), made
    assert made == sorted(made)
    assert SHAPE.fullmatch(new_id("pay"))


def test_ids_made_in_the_same_hundredth_differ_in_their_random_part() -> None:
    made = {new_id("pay", 1_765_000_000.0) for _ in range(1000)}
    assert len(made) == 1000
    assert len({i[:12] for i in made}) == 1  # the time part is the same
