"""`harvester plan`: list the sources, then say what the run would cost and when it ends."""

from __future__ import annotations

import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from harvester import config
from harvester.budget import series_requests
from harvester.client import Client
from harvester.console import duration, showing
from harvester.doctor import learned_windows
from harvester.journal import Journal
from harvester.partition import Limits
from harvester.pipeline import Harvest, Progress, client_settings
from harvester.sources import SourceReport, enumerate_source


async def plan(cfg: config.Config, budget: Any) -> bool:
    """List every source, then print what the run would cost (and with a budget or
    incremental runs, the schedule); True when a source cannot be listed completely."""
    reports: list[SourceReport] = []
    limits = Limits(page_size=cfg.http.page_size)  # windows learned serve every source
    limits.windows.update(learned_windows(cfg))  # what `doctor` measured
    progress = Progress(phase="listing")  # listing can take minutes: say so
    with (tempfile.TemporaryDirectory(prefix="harvester-plan-") as tmp,
          closing(Journal(Path(tmp) / "plan.sqlite")) as journal):
        journal.open()
        async with Client(client_settings(cfg)) as client, showing(progress):
            for idx, source in enumerate(cfg.sources):
                report = SourceReport(source.name, source.kind)
                reports.append(report)
                async for batch in enumerate_source(client, cfg.api.url, source, report, limits):
                    progress.listed += len(batch)
                    await journal.call(journal.add_ids, idx, batch)
        per_source = await journal.call(journal.ids_per_source, len(cfg.sources))
        total = sum((await journal.call(journal.counts)).values())
    stats = total * len(cfg.stats.counters)
    series = total * series_requests(cfg)
    rate = cfg.http.rate.requests / cfg.http.rate.per
    # per host, the API's details and the stats host's requests are paid in parallel
    seconds = (max(total, stats + series) if cfg.http.per_host else total + stats + series) / rate
    print(f"plan for harvest {cfg.name!r}")
    for r, n in zip(reports, per_source, strict=True):
        flag = "  (TRUNCATED: cannot be enumerated completely)" if r.truncated else ""
        least = r.minimum_requests
        floor = f" (minimum {least:,})" if least is not None else ""
        print(f"  source {r.name:<20} {n:>10,} ids  {r.requests:>7,} list requests{floor}"
              f"  {len(r.partitions)} partitions{flag}")
    print(f"  distinct ids         {total:>10,}")
    print("requests the run would make")
    print(f"  record details       {total:>10,}  (+1 per record listing 10 or more files)")
    print(f"  stats totals         {stats:>10,}  "
          f"({', '.join(cfg.stats.counters) or 'none'})")
    if series:
        print(f"  timelines/breakdowns {series:>10,}  (per article; entity series come on top)")
    if cfg.versions == "all":
        print("  versions             +1 per record, +1 per older version")
    if cfg.files.download:
        print("  file downloads       +1 per file fetched (see the files: filters)")
    print(f"  listing (done now)   {sum(r.requests for r in reports):>10,}")
    scope = "per host" if cfg.http.per_host else "shared by the API and stats hosts"
    print(f"time at {cfg.http.rate.requests} request(s) per {cfg.http.rate.per:g} s ({scope}): "
          f"about {duration(seconds)}")
    if budget is not None or cfg.incremental is not None:
        print_schedule(await Harvest(cfg, budget=budget).preview(), budget)
    return any(r.truncated for r in reports)


def print_schedule(plan: Any, budget: Any) -> None:
    """`plan`'s schedule: what fits tonight, nights to a full stats refresh, where it settles."""
    said = f"budget {budget.said}: {plan.allowance:,} requests" if budget else "no budget"
    print(f"tonight ({said})")
    print(f"  requests             {plan.requests:>10,}  (about {duration(plan.seconds)})")
    print(f"  records              {plan.records:>10,}  ({plan.records_deferred:,} deferred: "
          "first next night)")
    print(f"  stats refreshes      {plan.stats:>10,}  ({plan.stats_deferred:,} deferred: "
          "stalest first next night)")
    nights = "never (the budget holds none)" if plan.nights_to_full is None \
        else f"{plan.nights_to_full:,}"
    print(f"  nights to a full stats refresh: {nights}")
    if plan.settle_age is not None:
        print(f"  oldest stats once the schedule settles: {plan.settle_age:,} nights")

