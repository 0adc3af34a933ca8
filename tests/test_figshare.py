"""The paging state machine, without the network."""

from __future__ import annotations

import pytest

from harvester.figshare import Pager, files_may_be_truncated, list_query


def drive(pager: Pager, sizes: list[int], cursors: list[str | None]) -> list[tuple[dict, dict]]:
    seen = []
    for size, cursor in zip(sizes, cursors, strict=False):
        req = pager.request()
        if req is None:
            break
        seen.append(req)
        pager.advance(size, cursor)
    return seen


def test_short_page_ends_the_query() -> None:
    p = Pager()
    reqs = drive(p, [1000, 1000, 3], [None, None, None])
    assert [r[0]["page"] for r in reqs] == [1, 2, 3]
    assert p.done and not p.truncated
    assert p.request() is None


def test_a_short_page_is_the_end_only_when_no_cap_can_explain_it() -> None:
    """Asked 30, served 25: a silent page_size cap or the end. The next page decides, unless
    the endpoint once served more than this in one page (no cap is that low)."""
    ended = Pager(page_size=30)
    assert [r[0]["page"] for r in drive(ended, [25, 0], [None, None])] == [1, 2]
    assert ended.done and not ended.truncated and ended.capped is None
    capped = Pager(page_size=30)
    drive(capped, [25, 15], [None, None])
    assert capped.done and capped.capped == 25 and capped.requests == 2
    for most, count, requests in [(30, 25, 1), (26, 25, 1), (25, 25, 2), (0, 25, 2)]:
        p = Pager(page_size=30, most=most)
        drive(p, [count, 0], [None, None])
        assert p.requests == requests and p.done and p.capped is None


def test_window_then_cursor() -> None:
    p = Pager()
    reqs = drive(p, [1000] * 11 + [5], [f"c{i}" for i in range(12)])
    assert [r[0].get("page") for r in reqs[:9]] == list(range(1, 10))
    # page 10 would cross the 9,000 window: the cursor of page 9 carries on, with limit
    assert reqs[9] == ({"limit": 1000}, {"X-Cursor": "c8"})
    assert reqs[10] == ({"limit": 1000}, {"X-Cursor": "c9"})
    assert p.done and not p.truncated and p.items == 11_005


def test_window_without_cursor_is_truncated_not_finished() -> None:
    p = Pager()
    drive(p, [1000] * 9, [None] * 9)
    assert p.done and p.truncated


def test_repeated_cursor_is_a_loop_not_progress() -> None:
    p = Pager()
    drive(p, [1000] * 12, [None] * 8 + ["same", "same", "same", "same"])
    assert p.truncated
    assert p.requests == 10


def test_a_server_paging_forever_is_cut_off_as_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full pages and fresh cursors without end: the page guard stops the listing, and what
    it did not list is reported unlisted, never taken for the end of the repository."""
    monkeypatch.setattr("harvester.figshare.MAX_PAGES", 12)
    p = Pager()
    drive(p, [1000] * 20, [f"c{i}" for i in range(20)])
    assert p.requests == 12 and p.items == 12_000
    assert p.done and p.truncated


def test_refused_page_marks_truncation() -> None:
    p = Pager()
    p.advance(1000, None)
    p.refused()
    assert p.done and p.truncated


def test_files_cap_detection() -> None:
    assert files_may_be_truncated({"files": [{}] * 10})
    assert not files_may_be_truncated({"files": [{}] * 9})
    assert not files_may_be_truncated({})  # embargoed: no files key at all


def test_list_queries_default_to_stable_ascending_order() -> None:
    q = list_query("search", {"search_for": ":title: frog"})
    assert (q.method, q.path) == ("POST", "/articles/search")
    assert q.filters["order"] == "published_date" and q.filters["order_direction"] == "asc"
    q = list_query("group", {"group": 5, "order": "modified_date"})
    assert (q.method, q.path) == ("GET", "/articles")
    assert q.filters == {"group": 5, "order": "modified_date", "order_direction": "asc"}
