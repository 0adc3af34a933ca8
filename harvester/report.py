"""`harvester report`: one self-contained HTML page summarizing a snapshot or a warehouse.

Every figure is a DuckDB query over readback's views; charts are inline SVG and a
Content-Security-Policy forbids every fetch, so the page opens offline.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester import charts
from harvester.errors import ConfigError
from harvester.readback import Opened, one_scope, open_target
from harvester.store import check_written

_TITLE = "regexp_replace(coalesce({0}, '(untitled)'), '<[^>]+>', '', 'g')"
_LINK = "coalesce(a.url_public_html, a.figshare_url)"
_AUTHOR_KEY = "coalesce(CAST(author_id AS VARCHAR), 'name:' || full_name)"
_EXT = r"lower(regexp_extract(name, '\.([A-Za-z0-9]{1,10})$', 1))"
_SIZES = [(1_000, "< 1 KB"), (1_000_000, "1 KB-1 MB"), (100_000_000, "1-100 MB"),
          (1_000_000_000, "100 MB-1 GB"), (10_000_000_000, "1-10 GB"), (None, ">= 10 GB")]
_FIGURES = {"items": "items", "authors": "authors", "files": "files", "bytes": "bytes in files",
            "views": "views", "downloads": "downloads", "shares": "shares"}
# The four lists the tops section ranks: (name, SQL of (article_id, label), axis title).
_DIMENSIONS = [
    ("categories", "SELECT DISTINCT article_id, title AS label FROM categories "
                   "WHERE title IS NOT NULL", "category"),
    ("tags", "SELECT DISTINCT article_id, tag AS label FROM tags", "tag"),
    ("funders", "SELECT DISTINCT article_id, funder_name AS label FROM funding "
                "WHERE funder_name IS NOT NULL", "funder"),
    ("groups", "SELECT article_id, 'group ' || group_id AS label FROM articles "
               "WHERE group_id IS NOT NULL", "group"),
]
_EMPTY = ('<section id="empty"><h2>Nothing to show</h2><p class="empty">This snapshot holds no '
          "items: its sources selected nothing, or the run fetched no record. There is nothing "
          "to chart.</p></section>")
_INCREMENTAL = ('<p class="note">An incremental snapshot: it holds only the items changed since '
                "the previous run. Report a warehouse (<code>warehouse:FILE</code>) for the whole "
                "repository.</p>")


def write_report(target: str, snapshot: str | None = None, out: str | None = None) -> Path:
    """Write the report of `target` (see readback.open_target) to `out`; returns its path."""
    if out:
        check_written(Path(out), "--out", ".html")
    with closing(open_target(target, snapshot)) as opened:
        page = build(opened)
    source = Path(opened.source)  # by default beside the warehouse file, or in the harvest
    path = Path(out) if out else (source.with_name(source.stem + "-report.html")
                                  if opened.history else source.parent / "report.html")
    if path.is_dir():
        raise ConfigError(f"--out {path}: is a directory, not a file")
    if not out:  # beside the warehouse file, which might be anywhere
        check_written(path, "--out", ".html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write the report: "
                          f"{exc.strerror or exc}") from None
    return path


def build(db: Opened, now: datetime | None = None) -> str:
    """The whole page as text."""
    if db.one("SELECT count(*) FROM articles") or db.one("SELECT count(*) FROM reviews"):
        sections = [part for make in _SECTIONS if (part := make(db))]
    else:
        sections = [_EMPTY]
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    compared = f", compared with {db.previous_id}" if db.previous_id else ""
    return _PAGE.format(
        title=_e(f"Figshare harvest {db.label}"),
        label=_e(db.label),
        meta=_e(f"{'warehouse' if db.history else 'snapshot'} {db.snapshot_id}{compared}; "
                f"written {stamp}"),
        note=_INCREMENTAL if db.manifest.get("kind") == "incremental" else "",
        body="\n".join(sections),
        css=_CSS,
    )


def _figures(db: Opened, prefix: str = "") -> dict[str, Any]:
    """The headline's figures, of the current tables or of the previous snapshot's (`prev_`)."""
    row = db.rows(f"""
        SELECT (SELECT count(*) FROM {prefix}articles),
               (SELECT count(DISTINCT {_AUTHOR_KEY}) FROM {prefix}authors),
               (SELECT count(*) FROM {prefix}files), (SELECT sum(size) FROM {prefix}files),
               sum(total_views), sum(total_downloads), sum(total_shares)
        FROM {prefix}item_stats""")[0]
    return dict(zip(_FIGURES, row, strict=True))


def _previous_figures(db: Opened) -> dict[str, Any]:
    if db.history:  # a warehouse: the totals of stats_history's previous snapshot date
        return dict(db.rows(f"""
            SELECT counter, sum(total) FROM stats_history
            WHERE snapshot_date = (SELECT DISTINCT snapshot_date FROM stats_history
                                   ORDER BY 1 DESC LIMIT 1 OFFSET 1)
              AND {one_scope('stats_history')}
            GROUP BY counter"""))
    return _figures(db, "prev_") if db.previous_id else {}


def _headline(db: Opened) -> str | None:
    figures = _figures(db)
    if not figures["items"]:
        return None
    before = _previous_figures(db)
    cards = []
    for key, label in _FIGURES.items():
        value = figures[key]
        if value is None:
            continue
        show = _bytes if key == "bytes" else "{:,}".format
        delta = ""
        if before.get(key) is not None:
            diff = value - before[key]
            sign = "+" if diff > 0 else "\u2212" if diff < 0 else "\u00b1"
            delta = (f'<span class="delta" data-delta="{diff}">{sign}{show(abs(diff))} since '
                     f"{_e(db.previous_id or '')}</span>")
        cards.append(f'<div class="figure" data-metric="{key}" data-value="{value}">'
                     f'<span class="value" title="{value:,}">{show(value)}</span>'
                     f'<span class="label">{label}</span>{delta}</div>')
    return (f'<section id="headline"><h2>Headline figures</h2><div class="figures">'
            f'{"".join(cards)}</div>{_changes_line(db)}</section>')


def _changes_line(db: Opened) -> str:
    if db.history:
        counts = dict(db.rows("SELECT change, count(*) FROM changes WHERE snapshot_id = ? "
                              "GROUP BY change ORDER BY change", db.snapshot_id))
    elif db.previous_id:
        counts = dict(db.rows("""
            SELECT CASE WHEN p.article_id IS NULL THEN 'added'
                        WHEN a.article_id IS NULL THEN 'gone'
                        ELSE 'changed' END AS change, count(*)
            FROM articles a FULL JOIN prev_articles p USING (article_id)
            WHERE a.content_hash IS DISTINCT FROM p.content_hash
            GROUP BY change ORDER BY change"""))
    else:
        return ""
    parts = [f'<span data-change="{_e(k)}">{v:,} {_e(k)}</span>' for k, v in counts.items()]
    text = ", ".join(parts) if parts else "no item added, changed or gone"
    return f'<p class="changes">Items since {_e(db.previous_id or "")}: {text}.</p>'


def _published(db: Opened) -> str | None:
    per_year = db.rows("""
        SELECT strftime(published_date, '%Y'), coalesce(defined_type_name, 'unknown'), count(*)
        FROM articles WHERE published_date IS NOT NULL GROUP BY ALL ORDER BY 1, 2""")
    if not per_year:
        return None
    per_month = db.rows("""
        SELECT strftime(published_date, '%Y-%m'), coalesce(defined_type_name, 'unknown'),
               count(*)
        FROM articles
        WHERE published_date >= date_trunc('month', (SELECT max(published_date) FROM articles))
                                - INTERVAL 35 MONTH
        GROUP BY ALL ORDER BY 1, 2""")
    return _section("published", "Items published", [
        charts.columns(per_year, "Items published per year, by item type", "year (UTC)",
                       "items", "item type"),
        charts.columns(per_month, "Items published per month, by item type (the last 36 "
                       "months with items)", "month (UTC)", "items", "item type"),
    ])


def _tops(db: Opened) -> str | None:
    figures = []
    for name, sql, label in _DIMENSIONS:
        by_items = db.rows(f"SELECT label, count(*) AS n FROM ({sql}) GROUP BY label "
                           "ORDER BY n DESC, label LIMIT 10")
        if not by_items:
            continue
        figures.append(charts.hbar(by_items, f"Top 10 {name} by items", "items", label))
        by_views = db.rows(f"""
            SELECT label, sum(total_views) AS v FROM ({sql}) JOIN item_stats USING (article_id)
            WHERE total_views IS NOT NULL GROUP BY label ORDER BY v DESC, label LIMIT 10""")
        if by_views:
            figures.append(charts.hbar(by_views, f"Top 10 {name} by views", "views", label,
                                       color="#f58518"))
    return _section("tops", "Top categories, tags, funders and groups", figures)


def _top_items(db: Opened) -> str | None:
    parts = []
    for counter in ("views", "downloads"):
        rows = db.rows(f"""
            SELECT {_TITLE.format('a.title')}, {_LINK}, a.defined_type_name,
                   strftime(a.published_date, '%Y-%m-%d'), s.total_views, s.total_downloads
            FROM articles a JOIN item_stats s USING (article_id)
            WHERE s.total_{counter} IS NOT NULL
            ORDER BY s.total_{counter} DESC, a.article_id LIMIT 20""")
        body = [[str(i), _link(t, url), _e(kind or ""), _e(day or ""), _n(v), _n(d)]
                for i, (t, url, kind, day, v, d) in enumerate(rows, 1)]
        if body:
            parts.append(_table(f"Top 20 items by {counter}", f"top-{counter}",
                                ["#", "title", "type", "published", "views", "downloads"],
                                body, numeric={0, 4, 5}))
    return _section("top-items", "Most viewed and downloaded items", parts)


def _over_time(db: Opened) -> str | None:
    figures = []
    if db.history and db.one("SELECT count(DISTINCT snapshot_date) FROM stats_history") > 1:
        rows = db.rows(f"""
            SELECT strftime(snapshot_date, '%Y-%m-%d'), counter, sum(total) FROM stats_history
            WHERE {one_scope('stats_history')} AND counter IN ('views', 'downloads')
            GROUP BY ALL ORDER BY 1, 2""")
        figures.append(charts.lines(rows, "All-time views and downloads, as harvested each "
                                    "night (stats_history)", "snapshot date (UTC)",
                                    "all-time total (events)", "counter"))
    granularity = db.one("""
        SELECT granularity FROM stats_timeline WHERE item = 'article' AND granularity != 'total'
        GROUP BY granularity
        ORDER BY CASE granularity WHEN 'month' THEN 0 WHEN 'day' THEN 1 ELSE 2 END LIMIT 1""")
    if granularity:
        rows = db.rows(f"""
            SELECT strftime(period_start, '%Y-%m-%d'), counter, sum(count) FROM stats_timeline
            WHERE item = 'article' AND granularity = ? AND counter IN ('views', 'downloads')
              AND {one_scope('stats_timeline')}
            GROUP BY ALL ORDER BY 1, 2""", granularity)
        figures.append(charts.lines(rows, f"Views and downloads per {granularity}, all "
                                    "harvested items (stats_timeline)",
                                    f"{granularity} (UTC)", f"events per {granularity}",
                                    "counter", time_unit=granularity))
    return _section("over-time", "Views and downloads over time", figures)


def _countries(db: Opened) -> str | None:
    figures = []
    for counter, color in (("views", "#e15759"), ("downloads", "#76b7b2")):
        rows = db.rows("""
            SELECT country, sum(count) AS n FROM stats_breakdown
            WHERE item = 'article' AND city IS NULL AND counter = ?
            GROUP BY country HAVING n > 0 ORDER BY n DESC, country LIMIT 15""", counter)
        if not rows:
            continue
        first, last = db.rows("SELECT min(range_start), max(range_end) FROM stats_breakdown "
                              "WHERE item = 'article' AND counter = ?", counter)[0]
        figures.append(charts.hbar(rows, f"{counter.capitalize()} by country, top 15 "
                                   f"({first or '?'} to {last or '?'})", counter, "country",
                                   color=color))
    return _section("countries", "Views by country", figures)


def _authors(db: Opened) -> str | None:
    total = db.one(f"SELECT count(DISTINCT {_AUTHOR_KEY}) FROM authors")
    if not total:
        return None
    rows = db.rows(f"""
        WITH per AS (
            SELECT article_id, {_AUTHOR_KEY} AS key, any_value(full_name) AS name,
                   max(orcid_id) AS orcid
            FROM authors GROUP BY article_id, key)
        SELECT any_value(name), max(orcid), count(*) AS items, sum(total_views),
               sum(total_downloads)
        FROM per LEFT JOIN item_stats USING (article_id)
        GROUP BY key ORDER BY items DESC, 4 DESC NULLS LAST, 1 LIMIT 25""")
    body = [[_e(name or ""), _orcid(orcid), _n(items), _n(views), _n(downloads)]
            for name, orcid, items, views, downloads in rows]
    return _section("authors", "Authors", [_table(
        f"The {len(rows)} authors with most items, of {total:,}", "authors-table",
        ["author", "ORCID", "items", "views", "downloads"], body, numeric={2, 3, 4})])


def _files(db: Opened) -> str | None:
    formats = db.rows(f"""
        SELECT coalesce(nullif({_EXT}, ''), '(none)') AS ext, count(*) AS n, sum(size)
        FROM files GROUP BY ext ORDER BY n DESC, ext LIMIT 12""")
    if not formats:
        return None
    cases = " ".join(f"WHEN size < {limit} THEN {i}" for i, (limit, _) in enumerate(_SIZES)
                     if limit is not None)
    counts = dict(db.rows(f"SELECT CASE {cases} ELSE {len(_SIZES) - 1} END AS b, count(*) "
                          "FROM files WHERE size IS NOT NULL GROUP BY b"))
    sizes = [(label, counts.get(i, 0)) for i, (_, label) in enumerate(_SIZES)]
    body = [[_e(ext), _n(n), _e(_bytes(b)) if b is not None else ""] for ext, n, b in formats]
    return _section("files", "File formats and sizes", [
        charts.hbar([(e, n) for e, n, _ in formats], "Files by format (extension), top 12",
                    "files", "extension", color="#59a14f"),
        charts.ordered_bars(sizes, "Files by size", "file size (bytes, decimal units)",
                            "files"),
        _table("Formats", "formats-table", ["extension", "files", "total size"], body,
               numeric={1, 2}),
    ])


def _author_report(db: Opened) -> str | None:
    parts = []
    sources = (db.manifest.get("config") or {}).get("sources")  # parse_manifest checked config
    for source in sources if isinstance(sources, list) else []:
        if not isinstance(source, dict) or source.get("kind") != "author":
            continue
        params = source.get("params")
        params = params if isinstance(params, dict) else {}
        who = params.get("full_name") or params.get("orcid") or source.get("name")
        rows = db.rows(f"""
            SELECT {_TITLE.format('a.title')}, {_LINK}, a.doi,
                   strftime(a.published_date, '%Y-%m-%d'), s.total_views, s.total_downloads
            FROM articles a LEFT JOIN item_stats s USING (article_id)
            WHERE list_contains(a.sources, ?)
            ORDER BY a.published_date DESC NULLS LAST, a.article_id""", source.get("name"))
        body = [[_link(t, url), _link(doi, f"https://doi.org/{doi}") if doi else "",
                 _e(day or ""), _n(v), _n(d)] for t, url, doi, day, v, d in rows]
        parts.append(_table(f"Every record of {who} ({len(rows):,} items)",
                            f"author-{_e(str(source.get('name')))}",
                            ["title", "DOI", "published", "views", "downloads"], body,
                            numeric={3, 4}))
    return _section("author-report", "Author report", parts)


def _reviews(db: Opened) -> str | None:
    total = db.one("SELECT count(*) FROM reviews")
    if not total:
        return None
    status = db.rows("SELECT coalesce(status, 'unknown'), count(*) AS n FROM reviews "
                     "GROUP BY ALL ORDER BY n DESC, 1")
    rows = db.rows(f"""
        SELECT r.request_number, r.review_id, {_TITLE.format('a.title')}, {_LINK}, r.article_id,
               r.status, r.group_id, r.assigned_to, strftime(r.created_date, '%Y-%m-%d'),
               strftime(r.review_date, '%Y-%m-%d')
        FROM reviews r LEFT JOIN articles a USING (article_id)
        ORDER BY r.created_date DESC NULLS LAST, r.review_id LIMIT 100""")
    body = [[_id(req), _id(rid), _link(t, url) if url else _e(f"item {aid}"), _e(st or ""),
             _id(group), _id(who) if who is not None else "unassigned", _e(c or ""),
             _e(d or "")]
            for req, rid, t, url, aid, st, group, who, c, d in rows]
    return _section("reviews", "Review queue", [
        charts.hbar(status, "Reviews by status", "reviews", "status", color="#b07aa1"),
        _table(f"The {len(rows)} newest reviews, of {total:,}", "reviews-table",
               ["request", "review", "item", "status", "group", "assigned to", "requested",
                "decided"], body, numeric={0, 1, 4}),
    ])


_SECTIONS: list[Callable[[Opened], str | None]] = [
    _headline, _published, _tops, _top_items, _over_time, _countries, _authors, _files,
    _author_report, _reviews]


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _n(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _id(value: int | None) -> str:  # ids are names, not amounts: no digit grouping
    return "" if value is None else str(value)


def _bytes(value: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,} bytes"


def _link(text: str, url: str | None) -> str:
    if url and url.startswith(("https://", "http://")):
        return f'<a href="{_e(url)}" rel="noopener noreferrer">{_e(text)}</a>'
    return _e(text)


def _orcid(orcid: str | None) -> str:
    bare = (orcid or "").rsplit("/", 1)[-1]
    return _link(bare, f"https://orcid.org/{bare}") if bare else ""


def _table(caption: str, ident: str, head: Sequence[str], body: Sequence[Sequence[str]],
           numeric: set[int] | frozenset[int] = frozenset()) -> str:
    def cell(i: int, text: str, tag: str) -> str:
        cls = ' class="num"' if i in numeric else ""
        return f"<{tag}{cls}>{text}</{tag}>"

    head_html = "".join(cell(i, _e(h), "th") for i, h in enumerate(head))
    rows = "".join("<tr>" + "".join(cell(i, c, "td") for i, c in enumerate(r)) + "</tr>"
                   for r in body)
    return (f'<div class="table-wrap"><table id="{ident}"><caption>{_e(caption)}</caption>'
            f"<thead><tr>{head_html}</tr></thead><tbody>{rows}</tbody></table></div>")


def _section(ident: str, title: str, parts: Sequence[str]) -> str | None:
    if not parts:
        return None
    inner = "".join(p if p.startswith("<div") else f'<figure class="chart">{p}</figure>'
                    for p in parts)
    return f'<section id="{ident}"><h2>{_e(title)}</h2><div class="grid">{inner}</div></section>'


_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c7cbd4; font-size: 13px; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section { background: #fff; border-radius: 8px; padding: 16px 20px; margin: 16px 0;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 17px; margin: 0 0 12px; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
.figure { border: 1px solid #e2e5ea; border-radius: 6px; padding: 10px 16px; min-width: 130px; }
.figure .value { display: block; font-size: 24px; font-weight: 600; }
.figure .label { display: block; color: #5a6170; font-size: 13px; }
.figure .delta { display: block; color: #2f7d4f; font-size: 12px; margin-top: 4px; }
.grid { display: flex; flex-wrap: wrap; gap: 16px 28px; align-items: flex-start; }
figure.chart { margin: 0; }
figure.chart svg { max-width: 100%; height: auto; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0 8px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #eceef1;
         vertical-align: top; }
th { background: #f7f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td a { color: #1f5fbf; }
p.note { background: #fff7e0; border: 1px solid #f0d58a; padding: 8px 12px; border-radius: 6px; }
p.empty, p.changes { color: #5a6170; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
<header><h1>Figshare harvest: {label}</h1><p>{meta}</p></header>
<main>
{note}
{body}
</main>
</body>
</html>
"""
