"""The benchmarks' side-by-side rounds (benchmarks/rounds.py): every variant runs in every place
equally often, and no variant always runs right after the same one, whatever their number."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.rounds import alternate


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_each_variant_runs_in_each_place_equally_often(count: int) -> None:
    ran: list[str] = []
    names = "ABCDE"[:count]
    alternate({name: lambda name=name: ran.append(name) for name in names}, 4 * count)
    rounds = ["".join(ran[i : i + count]) for i in range(0, len(ran), count)]
    for place in range(count):
        assert Counter(order[place] for order in rounds) == {name: 4 for name in names}, rounds
    for name in names:  # what runs right before it, within a round: never always the same
        before = {order[order.index(name) - 1] for order in rounds if order.index(name) > 0}
        assert len(before) >= min(2, count - 1), (name, rounds)
    if count == 2:
        assert rounds[:4] == ["AB", "BA", "BA", "AB"]
