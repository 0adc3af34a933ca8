"""Deterministic Figshare-like corpus: compact per-item arrays, full records built on demand."""

from __future__ import annotations

from harvester.simulator.accounts import AccountViews
from harvester.simulator.generator import Account, Download, Group, Institution
from harvester.simulator.itemsets import ItemSets
from harvester.simulator.search import SearchIndex
from harvester.simulator.vocab import file_content

__all__ = ["Account", "Corpus", "Download", "Group", "Institution", "file_content"]


class Corpus(SearchIndex, AccountViews, ItemSets):
    """A deterministic Figshare corpus built from (seed, items); see docs/DESIGN.md."""
