"""Admin sources read other people's items the documented way (issue 25 item 3): public ones
from the public endpoint with no token, private ones as their owner (impersonate)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import orjson
import pyarrow.parquet as pq

from harvester.pipeline import Harvest
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings
from tests.conftest import write_config

# the live service's strictest reading: /account/articles/{id} is the caller's own items only
STRICT = SimSettings(items=400, seed=11, admin_reads_any=False)
ENV = {"ADMIN": STRICT.admin_token}


async def run(sim: Simulator, tmp_path: Path, **api: str) -> tuple[Path, list[dict[str, object]]]:
    cfg = write_config(tmp_path, sim, [{"kind": "institution_articles"}], env=ENV,
                       api={"token": "${ADMIN}", **api}, stats={"counters": []})
    result = await Harvest(cfg).run()
    assert result.snapshot is not None
    snap = Path(result.snapshot)
    errors = [orjson.loads(x) for x in (snap / "errors.ndjson").read_bytes().splitlines()]
    return snap, errors


async def test_public_items_need_no_token_and_private_ones_are_read_as_their_owner(
        tmp_path: Path) -> None:
    async with Simulator(STRICT) as sim:
        c = sim.corpus
        items = {row[0]: row[6] for row in c.institution_items()}  # id -> public
        reviewed = {r["article_id"]: r["account_id"] for r in c.reviews}
        snap, errors = await run(sim, tmp_path)
        records = [e for e in sim.log.entries
                   if e.route in ("/v2/articles/{article_id}", "/v2/account/articles/{article_id}")]
    got = set(pq.read_table(snap / "articles").column("article_id").to_pylist())
    public = {i for i, p in items.items() if p}
    private = set(items) - public
    # every public item, and every private one a review names the owner of, is in the snapshot
    assert public | (private & set(reviewed)) == got
    assert public and private & set(reviewed)
    # public records went to the public endpoint without a credential
    for e in records:
        aid = int(e.path.rsplit("/", 1)[1])
        if e.route == "/v2/articles/{article_id}":
            assert e.authorization is None
        elif aid in reviewed:  # private, as its owner
            assert parse_qs(e.query) == {"impersonate": [str(reviewed[aid])]}
    assert not any(e.route == "/v2/account/articles/{article_id}" and int(e.path.rsplit("/")[-1])
                   in public for e in records)
    # a draft no review names the owner of cannot be read: reported as such, never as gone
    unreadable = private - set(reviewed)
    assert unreadable
    assert {e["id"] for e in errors} == unreadable
    assert {e["reason"] for e in errors} <= {"private-unreadable"}


async def test_account_mode_reads_every_item_from_the_account_endpoint(tmp_path: Path) -> None:
    async with Simulator(STRICT.with_(admin_reads_any=True)) as sim:
        items = {row[0] for row in sim.corpus.institution_items()}
        snap, errors = await run(sim, tmp_path, admin_read="account")
        routes = {e.route for e in sim.log.entries}
    assert errors == []
    assert set(pq.read_table(snap / "articles").column("article_id").to_pylist()) == items
    assert "/v2/articles/{article_id}" not in routes
