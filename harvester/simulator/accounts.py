"""What tokens see: accounts, their private items, the admin's institution view and reviews."""

from __future__ import annotations

import random
from typing import Any

from harvester.simulator.generator import NONE, Account, Attrs, byte_positions
from harvester.simulator.presenters import Presenters
from harvester.simulator.settings import SimSettings
from harvester.simulator.vocab import DAY, iso, iso_naive


class AccountViews(Presenters):
    """Account, institution and curation-review views over the same items."""

    def account_for_token(self, token: str, settings: SimSettings | None = None) -> Account | None:
        """The account a token belongs to (tokens come from the current settings)."""
        settings = settings or self.settings
        if token and token == settings.admin_token:
            return self.admin
        if token and token == settings.user_token:
            return self.user
        return None

    def account_article_ids(self, account: Account) -> list[int]:
        """The account's own items: public ones and drafts, by created_date descending."""
        mine = [(self._created[k], self._ids[k]) for k, o in self._owner.items()
                if o == account.id and k not in self._withdrawn]  # fmt: skip
        mine += [(a.created, a.id) for a in self._private.values()
                 if self._private_owner[a.id] == account.id]  # fmt: skip
        return [i for _, i in sorted(mine, reverse=True)]

    def account_items(self, account: Account) -> list[tuple[int, int, int, int, int, int]]:
        """The account's own items as (id, published or 0, modified, item_type, group id or 0,
        created): what its search filters and orders by."""
        out: list[tuple[int, int, int, int, int, int]] = []
        for k, o in self._owner.items():
            if o == account.id and k not in self._withdrawn:
                g = self._gidx[k]
                out.append((self._ids[k], self._published[k],
                            self._mod_over.get(k, self._modified[k]), self._itype[k],
                            self.groups[g].id if g != NONE else 0, self._created[k]))
        for a in self._private.values():
            if self._private_owner[a.id] == account.id:
                out.append((a.id, 0, a.modified, a.itype,
                            self.groups[a.gidx].id if a.gidx != NONE else 0, a.created))
        return out

    def _owned(self, account: Account, article_id: int) -> Attrs | None:
        if article_id in self._private:
            a = self._private[article_id]
            return a if self._private_owner[article_id] == account.id else None
        k = self._index(article_id)
        if k >= 0 and self._owner.get(k) == account.id:
            return self._attrs(k)
        return None

    def private_article(
        self, account: Account, article_id: int, files_cap: int | None = None
    ) -> dict[str, Any]:
        """ArticleCompletePrivate of an item the account owns; KeyError otherwise."""
        a = self._owned(account, article_id)
        if a is None:
            raise KeyError(article_id)
        return self._cached(a, a.nver if a.public else 1, private=True, files_cap=files_cap)

    def private_files(self, account: Account, article_id: int) -> list[dict[str, Any]]:
        """PrivateFile list of an item the account owns; KeyError otherwise."""
        a = self._owned(account, article_id)
        if a is None:
            raise KeyError(article_id)
        return self._files(a, a.nver if a.public else 1, private=True)

    def private_light(self, article_id: int) -> dict[str, Any]:
        """Light presenter as account listings serve it (private url, null resource fields)."""
        if article_id in self._private:
            return self._light(self._private[article_id], private=True)
        return self._light(self._attrs(self._need(article_id)), private=True)

    def institution_items(self) -> list[tuple[int, int, int, int, int, int, bool]]:
        """The first institution's items incl. non-public ones, as
        (id, published or 0, modified, item_type, group id, created, public)."""
        out: list[tuple[int, int, int, int, int, int, bool]] = []
        if not self.institutions:
            return out
        for k in byte_positions(self._inst, 0):
            if k in self._withdrawn:
                continue
            g = self._gidx[k]
            out.append((self._ids[k], self._published[k], self._mod_over.get(k, self._modified[k]),
                        self._itype[k], self.groups[g].id if g != NONE else 0, self._created[k],
                        True))  # fmt: skip
        for a in self._private.values():
            out.append((a.id, 0, a.modified, a.itype, self.groups[a.gidx].id if a.gidx != NONE
                        else 0, a.created, False))  # fmt: skip
        return out

    def institution_light(self, article_id: int) -> dict[str, Any]:
        """Light presenter for the admin's institution listing (public or not)."""
        if article_id in self._private:
            return self._light(self._private[article_id], private=True)
        return self.light(article_id)

    def institution_article(self, article_id: int, files_cap: int | None = None) -> dict[str, Any]:
        """Full record of any item of the first institution, as the admin sees it."""
        if article_id in self._private:
            a = self._private[article_id]
            return self._cached(a, 1, private=True, files_cap=files_cap)
        k = self._need(article_id)
        a = self._attrs(k)
        if a.inst != 0:
            raise KeyError(article_id)
        return self._cached(a, a.nver, private=True, files_cap=files_cap)

    def owner_of(self, article_id: int) -> int:
        """The account owning an item of the first institution; KeyError for any other item."""
        if article_id in self._private:
            return self._private_owner[article_id]
        a = self._attrs(self._need(article_id))
        if a.inst != 0:
            raise KeyError(article_id)
        return self._account_of(a)

    def institution_files(self, article_id: int) -> list[dict[str, Any]]:
        """PrivateFile list of any item of the first institution, as the admin sees it."""
        if article_id in self._private:
            return self._files(self._private[article_id], 1, private=True)
        a = self._attrs(self._need(article_id))
        if a.inst != 0:
            raise KeyError(article_id)
        return self._files(a, a.nver, private=True)

    # ---- reviews ----------------------------------------------------------------------------

    @property
    def reviews(self) -> list[dict[str, Any]]:
        """Curation records of the first institution (id ascending)."""
        if self._reviews is None:
            self._reviews = self._build_reviews()
        return self._reviews

    def _build_reviews(self) -> list[dict[str, Any]]:
        rng = random.Random(f"reviews:{self.seed}:{self.n}")
        if not self.institutions:
            return []
        pool = byte_positions(self._inst, 0)
        chosen = sorted(rng.sample(pool, min(len(pool), 60)))
        out = []
        rid = 900_000 + self.seed % 1000
        entries: list[tuple[Attrs, str]] = [(self._attrs(k), "approved") for k in chosen]
        for j, a in enumerate(self._private.values()):
            if self._private_owner[a.id] != self.user.id or j % 2 == 0:
                entries.append((a, ("pending", "rejected", "closed", "pending")[j % 4]))
        for num, (a, status) in enumerate(entries):
            rid += 1 + rng.randrange(40)
            created = (a.published or a.modified) - rng.randrange(1, 10 * DAY)
            created = max(created, a.created)
            reviewed = status != "pending"
            out.append({
                "id": rid,
                "group_id": self.groups[a.gidx].id if a.gidx != NONE else 0,
                "account_id": self._account_of(a),
                "assigned_to": self.admin.id if reviewed or rng.random() < 0.5 else None,
                "article_id": a.id,
                "version": a.nver if a.public else 1,
                "comments_count": rng.randrange(4),
                "status": status,
                "created_date": iso(created),
                "modified_date": iso(max(created, a.published or a.modified)),
                "review_date": iso_naive(a.published or a.modified) if reviewed else None,
                "request_number": num + 1,
                "resolution_comment": "" if status in ("approved", "pending")
                else "Please add a README describing the files.",
            })  # fmt: skip
        return out

    def review_item(self, review: dict[str, Any], files_cap: int | None = None) -> dict[str, Any]:
        """The full record a review is about (as the admin sees it)."""
        return self.institution_article(review["article_id"], files_cap)
