"""Collections and projects: sets of public articles with their own presenters."""

from __future__ import annotations

import html
import random
from datetime import UTC, datetime
from typing import Any

from harvester.simulator.generator import NONE
from harvester.simulator.presenters import Presenters
from harvester.simulator.vocab import (
    API,
    FIRST_NAMES,
    FUNDERS,
    LAST_NAMES,
    iso,
    iso_naive,
    slug,
)


class ItemSets(Presenters):
    """Collection and project listings, light and complete presenters."""

    @property
    def collection_ids(self) -> list[int]:
        return [c["id"] for c in self._collections]

    @property
    def project_ids(self) -> list[int]:
        return [p["id"] for p in self._projects]

    def collection_meta(self, cid: int) -> dict[str, Any]:
        """Internal facts of a collection (institution index, dates...); KeyError if none."""
        return self._coll_by_id[cid]

    def project_meta(self, pid: int) -> dict[str, Any]:
        return self._proj_by_id[pid]

    def collection_articles(self, cid: int) -> list[int]:
        """Public article ids of a collection, ascending."""
        return [self._ids[k] for k in self._coll_by_id[cid]["members"] if k not in self._withdrawn]

    def project_articles(self, pid: int) -> list[int]:
        return [self._ids[k] for k in self._proj_by_id[pid]["members"] if k not in self._withdrawn]

    def collection_light(self, cid: int) -> dict[str, Any]:
        c = self._coll_by_id[cid]
        return {
            "id": cid,
            "title": c["title"],
            "doi": f"10.6084/m9.figshare.c.{cid}.v1",
            "handle": "",
            "url": f"{API}/collections/{cid}",
            "timeline": {"posted": iso_naive(c["published"]),
                         "firstOnline": iso_naive(c["published"])},
            "published_date": iso(c["published"]),
        }

    def collection(self, cid: int, version: int | None = None) -> dict[str, Any]:
        """CollectionComplete; KeyError for an unknown id or version (collections have one)."""
        c = self._coll_by_id[cid]
        if version not in (None, 1):
            raise KeyError((cid, version))
        rng = random.Random(cid * 31 + self.seed)
        inst = self.institutions[c["inst"]] if c["inst"] != NONE else None
        group = self.groups[c["gidx"]] if c["gidx"] != NONE else None
        authors = [self._author(f, la) for f, la in c["authors"]]
        out = self.collection_light(cid)
        out.update({
            "funding": [], "resource_id": "", "resource_doi": "", "resource_title": "",
            "resource_link": "", "resource_version": 0, "version": 1,
            "description": f"<p>A curated collection about {html.escape(c['title'])}.</p>",
            "categories": [self.categories[i] for i in c["cats"]],
            "references": [], "related_materials": [], "tags": c["tags"],
            "keywords": list(c["tags"]), "authors": authors,
            "institution_id": inst.id if inst else None,
            "group_id": group.id if group else None,
            "group_resource_id": group.resource_id if group else None,
            "articles_count": len(self.collection_articles(cid)), "public": True,
            "citation": f"{authors[0]['last_name']}, {authors[0]['first_name']} "
            f"({datetime.fromtimestamp(c['published'], UTC).year}). {c['title']}. figshare. "
            f"Collection. https://doi.org/10.6084/m9.figshare.c.{cid}.v1",
            "custom_fields": [], "created_date": iso(c["created"]),
            "modified_date": iso(c["modified"]),
        })  # fmt: skip
        if rng.random() < 0.3:
            out["funding"] = [{"id": 7_000 + cid % 1000, "title": "Infrastructure grant",
                               "grant_code": "", "funder_name": FUNDERS[0][0],
                               "is_user_defined": 0, "url": ""}]  # fmt: skip
        return out

    def project_light(self, pid: int) -> dict[str, Any]:
        p = self._proj_by_id[pid]
        return {
            "url": f"{API}/projects/{pid}",
            "id": pid,
            "title": p["title"],
            "created_date": iso(p["created"]),
            "modified_date": iso(p["modified"]),
            "published_date": iso(p["published"]),
        }

    def project(self, pid: int) -> dict[str, Any]:
        """ProjectComplete; KeyError for an unknown id."""
        p = self._proj_by_id[pid]
        out = self.project_light(pid)
        out.update({
            "funding": "", "funding_list": [],
            "description": f"<p>{html.escape(p['title'])}: shared data and code. 🔬</p>",
            "collaborators": [
                {"role_name": "Owner" if i == 0 else "Collaborator",
                 "user_id": 1_000_000 + (f * 256 + la) * 17, "name": f"{FIRST_NAMES[f]} "
                 f"{LAST_NAMES[la]}"} for i, (f, la) in enumerate(p["collaborators"])],
            "custom_fields": [],
            "figshare_url": f"https://figshare.com/projects/{slug(p['title'])}/{pid}",
        })  # fmt: skip
        return out
