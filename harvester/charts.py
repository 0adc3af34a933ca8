"""Charts as static SVG: Vega-Lite specs (plain dicts) rendered by vl-convert for the report.

Static SVG needs no script, so the page opens offline with nothing to load and nothing to fail;
hover text comes from a `<title>` per mark (the browser's own tooltip).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import vl_convert

WIDTH = 560
_COUNT = itertools.count(1)
_CONFIG = {
    # Arial's metrics, which vl-convert measures with (Liberation Sans has the same widths):
    # labels laid out here fit where the browser draws them
    "font": "Arial, 'Liberation Sans', Helvetica, sans-serif",
    "title": {"fontSize": 14, "anchor": "start", "offset": 10},
    "axis": {"labelFontSize": 11, "titleFontSize": 12, "labelLimit": 260},
    "legend": {"labelFontSize": 11, "titleFontSize": 12},
    "numberFormat": ",d",  # every value counts events
    "axisQuantitative": {"tickMinStep": 1},
    "range": {"category": {"scheme": "tableau10"}},
    "mark": {"tooltip": True},
    "view": {"stroke": None},
    "background": "white",
}


def hbar(rows: Sequence[tuple[str, int | float]], title: str, value_title: str,
         label_title: str, color: str = "#4c78a8") -> str:
    """Horizontal bars, largest first: a top-N list."""
    data = [{"label": str(label), "value": value} for label, value in rows]
    return render({
        "title": title, "data": {"values": data},
        "width": WIDTH - 200, "height": {"step": 20},
        # the browser's font may draw a long label wider than vl-convert measured it: room
        # on the left, and the label axis's title above its labels rather than beside them
        "padding": {"left": 40, "top": 5, "right": 5, "bottom": 5},
        "mark": {"type": "bar", "color": color},
        "encoding": {
            "y": {"field": "label", "type": "nominal", "sort": "-x", "title": label_title,
                  "axis": {"titleAngle": 0, "titleAlign": "right", "titleBaseline": "bottom",
                           "titleX": -6, "titleY": -4, "labelLimit": 240}},
            "x": {"field": "value", "type": "quantitative", "title": value_title},
        },
    })


def columns(rows: Sequence[tuple[str, str, int]], title: str, period_title: str,
            value_title: str, series_title: str) -> str:
    """Stacked columns per period (text, sorted), one colour per series."""
    data = [{"period": p, "series": s or "(none)", "value": v} for p, s, v in rows]
    return render({
        "title": title, "data": {"values": data}, "width": WIDTH, "height": 220,
        "mark": {"type": "bar"},
        "encoding": {
            "x": {"field": "period", "type": "ordinal", "title": period_title,
                  "axis": {"labelAngle": -45, "labelOverlap": "greedy"}},
            "y": {"field": "value", "type": "quantitative", "title": value_title,
                  "stack": "zero"},
            "color": {"field": "series", "type": "nominal", "title": series_title},
        },
    })


def lines(rows: Sequence[tuple[str, str, int]], title: str, date_title: str,
          value_title: str, series_title: str, time_unit: str | None = None) -> str:
    """One line per series over dates (ISO text): a counter over time."""
    data = [{"date": d, "series": s, "value": v} for d, s, v in rows]
    fmt = {"year": "%Y", "month": "%Y-%m"}.get(time_unit or "", "%Y-%m-%d")
    return render({
        "title": title, "data": {"values": data}, "width": WIDTH, "height": 220,
        "mark": {"type": "line", "point": len(data) <= 60},
        "encoding": {
            "x": {"field": "date", "type": "temporal", "title": date_title,
                  "axis": {"format": fmt, "labelAngle": -45, "labelOverlap": "greedy"}},
            "y": {"field": "value", "type": "quantitative", "title": value_title},
            "color": {"field": "series", "type": "nominal", "title": series_title},
        },
    })


def ordered_bars(rows: Sequence[tuple[str, int]], title: str, label_title: str,
                 value_title: str) -> str:
    """Vertical bars in the given order (size buckets, smallest first)."""
    data = [{"label": label, "value": value, "order": i} for i, (label, value) in enumerate(rows)]
    return render({
        "title": title, "data": {"values": data}, "width": WIDTH - 160, "height": 200,
        "mark": {"type": "bar", "color": "#59a14f"},
        "encoding": {
            "x": {"field": "label", "type": "ordinal", "title": label_title,
                  "sort": {"field": "order"}, "axis": {"labelAngle": 0}},
            "y": {"field": "value", "type": "quantitative", "title": value_title},
        },
    })


_ID = re.compile(r'\bid="([^"]+)"')
_MARK = re.compile(r'(<path aria-label="([^"]*)" role="graphics-symbol"[^>]*?)/>')


def render(spec: dict[str, Any]) -> str:
    """The spec as one `<svg>` element: ids made unique on the page, a `<title>` per mark."""
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "config": _CONFIG, **spec}
    svg = vl_convert.vegalite_to_svg(spec)
    n = next(_COUNT)
    for ident in set(_ID.findall(svg)):  # two charts on one page must not share clip ids
        new = f"c{n}-{ident}"
        svg = svg.replace(f'id="{ident}"', f'id="{new}"').replace(f"#{ident})", f"#{new})")
        svg = svg.replace(f'href="#{ident}"', f'href="#{new}"')
    svg = _MARK.sub(lambda m: f"{m.group(1)}><title>{m.group(2)}</title></path>", svg)
    return svg.replace("<svg ", '<svg role="img" ', 1)
