"""Charts as static SVG for the report: Vega-Lite specs (plain dicts) rendered by vl-convert.

Static SVG needs no script, so the page opens offline with nothing to load and nothing to fail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import vl_convert

WIDTH = 560
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


def _chart(title: str, data: list[dict[str, Any]], encoding: dict[str, Any],
           **spec: Any) -> str:
    return render({"title": title, "data": {"values": data}, "encoding": encoding, **spec})


def _channel(field: str, kind: str, title: str, **more: Any) -> dict[str, Any]:
    return {"field": field, "type": kind, "title": title, **more}


def hbar(rows: Sequence[tuple[str, int | float]], title: str, value_title: str,
         label_title: str, color: str = "#4c78a8") -> str:
    """Horizontal bars, largest first: a top-N list."""
    # the browser's font may draw a long label wider than vl-convert measured it: room on the
    # left, and the label axis's title above its labels rather than beside them
    axis = {"titleAngle": 0, "titleAlign": "right", "titleBaseline": "bottom", "titleX": -6,
            "titleY": -4, "labelLimit": 240}
    return _chart(title, [{"label": str(label), "value": value} for label, value in rows], {
        "y": _channel("label", "nominal", label_title, sort="-x", axis=axis),
        "x": _channel("value", "quantitative", value_title),
    }, width=WIDTH - 200, height={"step": 20}, mark={"type": "bar", "color": color},
        padding={"left": 40, "top": 5, "right": 5, "bottom": 5})


def columns(rows: Sequence[tuple[str, str, int]], title: str, period_title: str,
            value_title: str, series_title: str) -> str:
    """Stacked columns per period (text, sorted), one colour per series."""
    return _chart(title, [{"period": p, "series": s or "(none)", "value": v} for p, s, v in rows], {
        "x": _channel("period", "ordinal", period_title,
                      axis={"labelAngle": -45, "labelOverlap": "greedy"}),
        "y": _channel("value", "quantitative", value_title, stack="zero"),
        "color": _channel("series", "nominal", series_title),
    }, width=WIDTH, height=220, mark={"type": "bar"})


def lines(rows: Sequence[tuple[str, str, int]], title: str, date_title: str,
          value_title: str, series_title: str, time_unit: str | None = None) -> str:
    """One line per series over dates (ISO text): a counter over time."""
    fmt = {"year": "%Y", "month": "%Y-%m"}.get(time_unit or "", "%Y-%m-%d")
    return _chart(title, [{"date": d, "series": s, "value": v} for d, s, v in rows], {
        "x": _channel("date", "temporal", date_title,
                      axis={"format": fmt, "labelAngle": -45, "labelOverlap": "greedy"}),
        "y": _channel("value", "quantitative", value_title),
        "color": _channel("series", "nominal", series_title),
    }, width=WIDTH, height=220, mark={"type": "line", "point": len(rows) <= 60})


def ordered_bars(rows: Sequence[tuple[str, int]], title: str, label_title: str,
                 value_title: str) -> str:
    """Vertical bars in the given order (size buckets, smallest first)."""
    data = [{"label": label, "value": value, "order": i} for i, (label, value) in enumerate(rows)]
    return _chart(title, data, {
        "x": _channel("label", "ordinal", label_title, sort={"field": "order"},
                      axis={"labelAngle": 0}),
        "y": _channel("value", "quantitative", value_title),
    }, width=WIDTH - 160, height=200, mark={"type": "bar", "color": "#59a14f"})


_MARK = re.compile(r'(<path aria-label="([^"]*)" role="graphics-symbol"[^>]*?)/>')


def render(spec: dict[str, Any]) -> str:
    """The spec as one `<svg>` element with a `<title>` per mark (the browser's tooltip)."""
    svg = vl_convert.vegalite_to_svg({"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
                                      "config": _CONFIG, **spec})
    svg = _MARK.sub(lambda m: f"{m[1]}><title>{m[2]}</title></path>", svg)
    return svg.replace("<svg ", '<svg role="img" ', 1)
