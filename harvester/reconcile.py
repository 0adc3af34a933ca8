"""Completeness is reported, not assumed: compare one enumeration's ids with an independent one."""

from __future__ import annotations

from typing import Any

from harvester.partition import IdSet

SAMPLE = 1_000  # ids listed per difference in the manifest (the counts are always exact)


def compare(first: IdSet, second: IdSet, *, names: tuple[str, str],
            detail: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `reconcile` entry: both counts, each difference (counted, and its first
    ids), and whether the two enumerations agree."""
    a, b = names
    only_first = [i for i in first if i not in second]
    only_second = [i for i in second if i not in first]
    return {
        "against": b,
        **detail,
        a: len(first),
        b: len(second),
        f"only_{a}": len(only_first),
        f"only_{b}": len(only_second),
        f"only_{a}_ids": only_first[:SAMPLE],
        f"only_{b}_ids": only_second[:SAMPLE],
        "complete": not only_first and not only_second,
    }
