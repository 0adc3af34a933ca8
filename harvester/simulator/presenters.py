"""Article presenters: light list dicts, full ArticleComplete records and file lists."""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from harvester.simulator.generator import NONE, Attrs, Download, ItemArrays, mix64
from harvester.simulator.vocab import (
    API,
    DAY,
    DESC_TEMPLATES,
    FILE_SIZE_EXP,
    FILE_STEMS,
    FILE_TYPES,
    FIRST_NAMES,
    FUNDERS,
    ITEM_TYPES,
    LAST_NAMES,
    LEGACY_BEFORE,
    LICENSES,
    TAGS,
    TITLE_TEMPLATES,
    TITLE_WORDS,
    file_md5,
    iso,
    iso_date,
    iso_naive,
    make_orcid,
    slug,
)


class Presenters(ItemArrays):
    """Renders an item's dicts from its attributes; full records are cached per (id, version)."""

    @staticmethod
    def _title(a: Attrs) -> str:
        template, used = TITLE_TEMPLATES[a.tmpl]
        words = [TITLE_WORDS[w] for w in a.tw[:used]]
        words[0] = words[0][:1].upper() + words[0][1:]
        return template.format(*words, "", "", "")

    @staticmethod
    def _description(a: Attrs) -> str:
        w0, w1 = TITLE_WORDS[a.dw[0]], TITLE_WORDS[a.dw[1]]
        return DESC_TEMPLATES[a.dtmpl].format(w0[:1].upper() + w0[1:], w1)

    @staticmethod
    def _author(f: int, la: int) -> dict[str, Any]:
        combo = f * 256 + la
        first, last = FIRST_NAMES[f], LAST_NAMES[la]
        h = mix64(combo + 77)
        active = h % 10 < 7
        return {
            "id": 1_000_000 + combo * 17,
            "full_name": f"{first} {last}",
            "first_name": first,
            "last_name": last,
            "is_active": active,
            "url_name": slug(f"{first} {last}") if active else "_",
            "orcid_id": make_orcid(h >> 8) if (h >> 4) % 20 < 9 else "",
        }

    def texts(self, article_id: int) -> dict[str, list[str]]:
        """Searchable texts of a public item: title, description, tags, categories, authors."""
        a = self._attrs(self._need(article_id))
        return {
            "title": [self._title(a)],
            "description": [self._description(a)],
            "tag": [TAGS[t] for t in a.tags],
            "category": [self.categories[c]["title"] for c in a.cats],
            "author": [f"{FIRST_NAMES[f]} {LAST_NAMES[la]}" for f, la in a.authors],
        }

    # ---- structural facts shared by the light and the full presenters ----------------------

    @staticmethod
    def _nfiles(a: Attrs) -> int:
        sel = a.h & 1023
        if sel < 30:
            return 0
        if sel < 500:
            return 1
        r = (a.h >> 40) & 0xFFFF
        if sel < 800:
            return 2 + r % 4
        if sel < 950:
            return 6 + r % 5
        return 11 + r % 20

    @staticmethod
    def _access(a: Attrs) -> str:
        """'embargo' (file embargo), 'confidential' or 'open'."""
        sel = (a.h >> 10) & 1023
        return "embargo" if sel < 25 else ("confidential" if sel < 45 else "open")

    def _legacy(self, a: Attrs) -> bool:
        """Older bodies lack keywords, related_materials, folder_structure, names, mimetypes."""
        return a.public and a.published < LEGACY_BEFORE and (a.h >> 20) & 1 == 1

    def _version_time(self, a: Attrs, v: int) -> int:
        if a.nver == 1 or v >= a.nver:
            return a.published
        frac = 0.05 + ((a.h >> 24) & 255) / 600.0
        first = a.created + int((a.published - a.created) * frac)
        return first + (a.published - first) * (v - 1) // (a.nver - 1)

    def _doi(self, a: Attrs, v: int) -> str:
        if not a.public:
            return ""
        if a.inst != NONE and self.institutions[a.inst].doi_prefix != "10.6084":
            inst = self.institutions[a.inst]
            return f"{inst.doi_prefix}/{inst.string_id}.{a.id}.v{v}"
        return f"10.6084/m9.figshare.{a.id}.v{v}"

    def _handle(self, a: Attrs, v: int) -> str:
        if a.public and a.inst != NONE and self.institutions[a.inst].string_id == "lboro":
            return f"2134/{a.id}.v{v}"
        return ""

    def _resource(self, a: Attrs) -> tuple[str, str] | None:
        if (a.h >> 23) & 15 or not a.public:
            return None
        words = [TITLE_WORDS[w] for w in a.dw]
        return (f"On the {words[0]} of {words[1]}", f"10.1371/journal.pone.{a.id % 10**7:07d}")

    def _timeline(self, a: Attrs, v: int) -> dict[str, str]:
        if not a.public:
            return {}
        first = self._version_time(a, 1)
        out = {
            "posted": iso_naive(self._version_time(a, v)),
            "firstOnline": iso_date(first) if (a.h >> 21) & 3 == 0 else iso_naive(first),
        }
        if self._resource(a) is not None:
            out["publisherPublication"] = iso_date(first - DAY * ((a.h >> 30) & 63))
        return out

    def _urls(self, a: Attrs) -> tuple[str, str]:
        """(figshare_url, url_public_html): institutional items live on their portal."""
        portal = "figshare.com"
        if a.inst != NONE and a.public:
            portal = f"{self.institutions[a.inst].string_id}.figshare.com"
        kind = ITEM_TYPES[a.itype].replace(" ", "_")
        url = f"https://{portal}/articles/{kind}/{slug(self._title(a))}/{a.id}"
        return url, url

    def _thumb(self, a: Attrs) -> str:
        if a.itype in (1, 2, 5, 7) and self._nfiles(a) and self._access(a) == "open":
            fid = a.id * 31 + 1
            return f"https://ndownloader.figshare.com/files/{fid}/preview/{fid}/thumb.png"
        return ""

    # ---- presenters ----------------------------------------------------------------------

    def light(self, article_id: int) -> dict[str, Any]:
        """The list/search presenter (group_id 0 and resource fields "" when absent)."""
        return self._light(self._attrs(self._need(article_id)))

    def _light(self, a: Attrs, private: bool = False) -> dict[str, Any]:
        v = a.nver if a.public else 1
        _, public_html = self._urls(a)
        res = self._resource(a)
        return {
            "id": a.id,
            "title": self._title(a),
            "doi": self._doi(a, v),
            "handle": self._handle(a, v),
            "url": f"{API}/account/articles/{a.id}" if private else f"{API}/articles/{a.id}",
            "published_date": iso(a.published) if a.published else None,
            "thumb": self._thumb(a),
            "defined_type": a.itype,
            "defined_type_name": ITEM_TYPES[a.itype],
            "group_id": 0 if a.gidx == NONE else self.groups[a.gidx].id,
            "url_private_api": f"{API}/account/articles/{a.id}",
            "url_public_api": f"{API}/articles/{a.id}",
            "url_private_html": f"https://figshare.com/account/articles/{a.id}",
            "url_public_html": public_html,
            "timeline": self._timeline(a, v),
            "resource_title": res[0] if res else (None if private else ""),
            "resource_doi": res[1] if res else (None if private else ""),
            "created_date": iso(a.created),
            "modified_date": iso(a.modified),
        }

    def search_light(self, article_id: int) -> dict[str, Any]:
        """Light presenter as /articles/search serves it (with project_id)."""
        k = self._need(article_id)
        out = self._light(self._attrs(k))
        out["project_id"] = self._project_of.get(k)
        return out

    def article(
        self, article_id: int, version: int | None = None, files_cap: int | None = None
    ) -> dict[str, Any]:
        """Full ArticleComplete of a public item (a version of it when given); KeyError if none.

        `files` holds at most `files_cap` entries (default: settings.full_record_files_cap).
        """
        a = self._attrs(self._need(article_id))
        v = a.nver if version is None else version
        if not 1 <= v <= a.nver:
            raise KeyError((article_id, version))
        return self._cached(a, v, private=False, files_cap=files_cap)

    def files(self, article_id: int, version: int | None = None) -> list[dict[str, Any]]:
        """The complete public file list of the latest version, or of `version` ([] under file
        embargo or confidentiality)."""
        a = self._attrs(self._need(article_id))
        if self._access(a) != "open":
            return []
        return self._files(a, a.nver if version is None else version, private=False)

    def _cached(
        self, a: Attrs, v: int, private: bool, files_cap: int | None = None
    ) -> dict[str, Any]:
        key = (a.id, v, private)
        rec = self._records.get(key)
        if rec is None:
            rec = self._record(a, v, private)
            self._records[key] = rec
            if len(self._records) > self._record_cap:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        # callers get their own copy: the cached record must never change under them
        out: dict[str, Any] = orjson.loads(orjson.dumps(rec))
        if "files" in out:
            cap = self.settings.full_record_files_cap if files_cap is None else files_cap
            out["files"] = out["files"][:cap]
        return out

    def _files(self, a: Attrs, v: int, private: bool) -> list[dict[str, Any]]:
        nfiles = self._nfiles(a)
        if v < a.nver and nfiles > 1:
            nfiles -= 1  # older versions had one file fewer
        rng = random.Random(a.h ^ 0xF11E5)
        legacy = self._legacy(a)
        out = []
        for j in range(nfiles):
            fid = a.id * 31 + 1 + j
            ext, mime = FILE_TYPES[rng.randrange(len(FILE_TYPES))]
            stem = FILE_STEMS[rng.randrange(len(FILE_STEMS))]
            # names repeat inside one item now and then (different ids)
            name = f"{stem}.{ext}" if rng.random() < 0.3 else f"{stem}_{j + 1}.{ext}"
            if rng.random() < 0.06:
                host = rng.choice(["https://github.com/example-lab", "https://zenodo.org/records"])
                f: dict[str, Any] = {
                    "id": fid, "name": name, "size": 0, "is_link_only": True,
                    "download_url": f"{host}/{fid}", "supplied_md5": "", "computed_md5": "",
                }  # fmt: skip
            else:
                size = int(10 ** rng.uniform(*FILE_SIZE_EXP))
                md5 = file_md5(self.seed, fid, size)
                f = {
                    "id": fid, "name": name,
                    "size": size, "is_link_only": False,
                    "download_url": f"https://ndownloader.figshare.com/files/{fid}",
                    "supplied_md5": md5 if rng.random() < 0.6 else "",
                    "computed_md5": md5 if rng.random() < 0.97 else "",
                }  # fmt: skip
            if not legacy:
                f["mimetype"] = "" if f["is_link_only"] or rng.random() < 0.05 else mime
            if fid in self._file_names:
                f["name"] = self._file_names[fid]
            if private:
                f.update(
                    status="available", viewer_type="", preview_state="preview not available",
                    upload_url="" if f["is_link_only"] else
                    f"https://uploads.figshare.com/upload/{hashlib.md5(str(fid).encode()).hexdigest()}",
                    upload_token="" if f["is_link_only"] else
                    str(_uuid(mix64(fid))), is_attached_to_public_version=a.public,
                )  # fmt: skip
            out.append(f)
        return out

    def _record(self, a: Attrs, v: int, private: bool) -> dict[str, Any]:
        """Build the full record; every key ArticleComplete serves, in Figshare's order."""
        rng = random.Random(a.h)
        legacy = self._legacy(a)
        access = self._access(a) if a.public else "open"
        files = self._files(a, v, private)
        latest = v == a.nver
        title = self._title(a)
        description = self._description(a)
        if not latest:
            description = f"{description}<p>Version {v}: preliminary release.</p>"
        for e in range(a.edits if latest else 0):
            description += f"<p>Metadata revised ({e + 1}).</p>"
        authors = [self._author(f, la) for f, la in a.authors]
        if legacy:
            for au in authors:
                del au["first_name"], au["last_name"]
        inst = self.institutions[a.inst] if a.inst != NONE else None
        tags = [TAGS[t] for t in a.tags]
        if not latest and len(tags) > 1:
            tags = tags[:-1]
        funding_list: list[dict[str, Any]] = []
        for i in range(rng.choice([0, 0, 0, 1, 1, 2])):
            name, url = FUNDERS[rng.randrange(len(FUNDERS))]
            funding_list.append({
                "id": 100_000 + (a.id * 7 + i) % 900_000, "title": f"{name} grant",
                "grant_code": f"G{rng.randrange(10**6):06d}" if rng.random() < 0.7 else "",
                "funder_name": name, "is_user_defined": rng.choice([0, 1]),
                "url": f"{url}/award/{rng.randrange(10**6)}" if rng.random() < 0.5 else "",
            })  # fmt: skip
        funding: str | None
        if funding_list and rng.random() < 0.7:
            funding = "; ".join(str(f["title"]) for f in funding_list)
        else:
            funding = None if rng.random() < 0.8 else ""
        custom: list[dict[str, Any]] = []
        if inst is not None:
            custom = [
                {"name": "Publisher", "value": inst.name, "field_type": "text", "settings": {},
                 "order": 0, "is_mandatory": True},
                {"name": "Research themes",
                 "value": rng.sample(["Climate", "Health", "Food", "Energy", "Culture"], 2),
                 "field_type": "dropdown_large_list", "settings": {}, "order": 1,
                 "is_mandatory": False},
                {"name": "Ethics approval", "value": "" if rng.random() < 0.5 else "Not required",
                 "field_type": "textarea",
                 "settings": {"validations": {"min_length": 0, "max_length": 1000}},
                 "order": 2, "is_mandatory": False},
            ]  # fmt: skip
            if legacy:
                custom = [{"name": c["name"], "value": c["value"]} for c in custom]
        license_ = LICENSES[
            rng.choice([2, 3, 4]) if a.itype == 9 else rng.choice([0, 0, 0, 1, 5, 6])
        ]
        size = sum(f["size"] for f in files)
        year = datetime.fromtimestamp(self._version_time(a, v) or a.created, UTC).year
        doi = self._doi(a, v)
        surnames = "; ".join(f"{LAST_NAMES[la]}, {FIRST_NAMES[f]}" for f, la in a.authors)
        kind = ITEM_TYPES[a.itype]
        publisher = inst.name if inst else "figshare"
        citation = f"{surnames} ({year}). {re.sub(r'<[^>]+>', '', title)}. {publisher}. "
        citation += f"{kind[:1].upper()}{kind[1:]}. https://doi.org/{doi}" if doi else kind.title()
        res = self._resource(a)
        light = self._light(a)
        figshare_url = light["url_public_html"]
        rec: dict[str, Any] = {}
        if access == "open" or private:
            rec["files"] = files  # capped on the way out: the cap is a run-time knob
        if not legacy:
            rec["folder_structure"] = (
                {str(f["id"]): "raw" for f in files[:3]} if len(files) > 10 else {}
            )
        rec["custom_fields"] = custom
        rec["authors"] = authors
        rec["figshare_url"] = figshare_url
        if not legacy:
            rec["download_disabled"] = False
        rec["description"] = description
        rec["funding"] = funding
        rec["funding_list"] = funding_list
        rec["version"] = v if a.public else 0
        rec["status"] = "public" if a.public else "draft"
        rec["size"] = size
        rec["created_date"] = iso(a.created)
        older = max(self._version_time(a, v), self._version_time(a, v + 1) - 3600)
        rec["modified_date"] = iso(a.modified if latest else older)
        rec["is_public"] = a.public
        rec["is_confidential"] = access == "confidential"
        rec["is_metadata_record"] = not files
        rec["confidential_reason"] = (
            "Contains sensitive personal data" if access == "confidential" else ""
        )
        rec["metadata_reason"] = "Data held in an external repository" if not files else ""
        rec["license"] = license_
        rec["tags"] = tags
        if not legacy:
            rec["keywords"] = list(tags)
        rec["categories"] = [self.categories[c] for c in a.cats]
        rec["references"] = [
            f"https://doi.org/10.{1000 + rng.randrange(9000)}/{rng.randrange(10**6)}"
            for _ in range(rng.choice([0, 0, 1, 2]))
        ]
        if not legacy:
            rec["related_materials"] = (
                [{"id": 10_000 + a.id % 10**6, "identifier": res[1], "title": res[0],
                  "relation": "IsSupplementTo", "identifier_type": "DOI", "is_linkout": True,
                  "link": f"https://doi.org/{res[1]}"}]
                if res else []
            )  # fmt: skip
        rec["has_linked_file"] = any(f["is_link_only"] for f in files)
        rec["citation"] = citation
        embargoed = access == "embargo"
        rec["is_embargoed"] = embargoed
        rec["embargo_date"] = (
            f"{2027 + (a.h >> 50) % 2}-{1 + (a.h >> 52) % 12:02d}-01T00:00:00Z"
            if embargoed
            else None
        )
        rec["embargo_type"] = "file" if embargoed else None
        rec["embargo_title"] = "File(s) under embargo" if embargoed else ""
        rec["embargo_reason"] = (
            "Awaiting publication of the associated article" if embargoed else ""
        )
        rec["embargo_options"] = []
        rec["id"] = a.id
        rec["title"] = title
        rec["doi"] = doi
        rec["handle"] = self._handle(a, v)
        rec["url"] = f"{API}/articles/{a.id}"
        rec["published_date"] = iso(self._version_time(a, v)) if a.public else None
        rec["thumb"] = light["thumb"]
        rec["defined_type"] = a.itype
        rec["defined_type_name"] = kind
        rec["group_id"] = self.groups[a.gidx].id if a.gidx != NONE else None
        rec["url_private_api"] = f"{API}/account/articles/{a.id}"
        rec["url_public_api"] = f"{API}/articles/{a.id}"
        rec["url_private_html"] = f"https://figshare.com/account/articles/{a.id}"
        rec["url_public_html"] = light["url_public_html"]
        rec["timeline"] = self._timeline(a, v)
        rec["resource_title"] = res[0] if res else None
        rec["resource_doi"] = res[1] if res else None
        if private:
            rec["account_id"] = self._account_of(a)
            rec["group_resource_id"] = self.groups[a.gidx].resource_id if a.gidx != NONE else None
            rec["curation_status"] = "approved" if a.public else "draft"
        return rec

    def rename_file(self, article_id: int, file_id: int, name: str) -> None:
        """Serve the public item's file under `name` from now on (hostile-name tests)."""
        k = self._need(article_id)
        if not any(f["id"] == file_id for f in self._files(self._attrs(k), self._nver[k], False)):
            raise KeyError((article_id, file_id))
        self._file_names[file_id] = name
        self._changed(k)

    def download(self, file_id: int) -> Download:
        """The file a download URL names (ndownloader.figshare.com/files/<id>); KeyError if none.

        File ids are `article id * 31 + 1 + position`, so the item is found without an index.
        """
        article_id, j = divmod(file_id - 1, 31)
        owner: int | None
        if article_id in self._private:
            a, owner = self._private[article_id], self._private_owner[article_id]
            files, is_open = self._files(a, 1, private=False), True
        else:
            k = self._need(article_id)
            a, owner = self._attrs(k), self._owner.get(k)
            files, is_open = self._files(a, a.nver, private=False), self._access(a) == "open"
        if j >= len(files) or files[j]["id"] != file_id or files[j]["is_link_only"]:
            raise KeyError(file_id)
        return Download(files[j], owner, a.public, is_open)

    def _account_of(self, a: Attrs) -> int:
        if not a.public:
            return self._private_owner[a.id]
        return self._owner.get(a.k, 2_000_000 + (a.h >> 33) % 500_000)



def _uuid(h: int) -> str:
    x = f"{h:016x}{mix64(h):016x}"
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-a{x[17:20]}-{x[20:32]}"
