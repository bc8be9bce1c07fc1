"""Running variants side by side: every round runs each variant once, in a rotated order, so
that slow drift (other load on the machine, a warming cache) hits all variants alike."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def alternate(variants: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Each variant's results, one per round, in round order."""
    names = list(variants)
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]  # each variant in each place once per len(names) rounds
        if (round_index // len(names)) % 2:
            # Then the same rotations reversed: no variant always runs right after the same one
            # (for two variants: AB BA BA AB). Reversing every other round instead undid the
            # rotation for an even number of variants: two ran in one order only.
            order.reverse()
        for name in order:
            gc.collect()  # garbage from the previous variant is not this one's cost
            results[name].append(variants[name]())
    return results
