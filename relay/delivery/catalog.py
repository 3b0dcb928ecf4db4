"""The discovery catalog as a service (SPEC.md §12): keeps each local agent's entry current and
answers the searches of every face — the ARD routes (relay/server/ard.py), the MCP face's
``find_agents`` (relay/server/mcp.py) and ``synq find`` — one way.

Keeping entries current:

1. ``synq agent add`` with an A2A or MCP endpoint describes the agent at once (``refresh``).
2. The relay asks every adapter-backed agent again every ``REFRESH_INTERVAL`` (``run``): an A2A
   agent's card, an MCP server's tool list. What changed is written, with its index, in one
   store transaction; what did not change writes nothing.
3. An agent that cannot be reached keeps what it said last: the store holds it, so a restarted
   relay lists an MCP server's tools before the server is reached again.

An adapter takes part by implementing :class:`Describes`; the others (inbox-only agents) are
described by the operator alone (``synq agent add|set --description --tag --query``).

Searching: relay/core/catalog.py's module docstring lists the steps; the parts that need I/O
— the store's full-text match and the partners — are here. Federation: ``"none"`` searches
here; ``"referrals"`` adds the registries of ``[discovery] partners``; ``"auto"`` hands the
request to the ``federated`` hook, which merges what partners answer (SPEC.md §12.6), or, with
no hook, is ``"none"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from relay.core import catalog as cat
from relay.core.catalog import (
    MAX_SEARCH_RESULTS,
    CatalogRecord,
    ExploreRequest,
    ListRequest,
    Profile,
    SearchRequest,
    Viewer,
)
from relay.core.clock import Clock
from relay.core.errors import NotFound, SynqError
from relay.core.policy import Policy
from relay.store.base import AgentRecord, Store

__all__ = [
    "REFRESH_INTERVAL",
    "CatalogService",
    "Describes",
    "FederatedSearch",
    "PartnerRegistries",
    "SearchPage",
]

log = logging.getLogger("synq.catalog")

#: How often adapter-backed agents are asked again what they can do. An A2A card is cached by
#: the adapter for ``CARD_TTL`` (300 s) anyway; a minute keeps search close to what agents say
#: without asking a hundred agents more than a few times a minute.
REFRESH_INTERVAL: Final = 60.0
#: How long the number of entries a caller may see is remembered (``CatalogService._count``).
COUNT_TTL: Final = 10.0
#: Scopes whose count is remembered: one per kind of caller, and one per agent rule set that
#: hides agents from some callers; a bound all the same.
MAX_COUNTS: Final = 256
#: Public entries in the manifest (``/.well-known/ard.json``). Stops a relay with very many
#: public agents from serving (and building) a manifest of megabytes to anyone; the registry's
#: search and list reach the rest.
MAX_MANIFEST_ENTRIES: Final = 1000


@runtime_checkable
class Describes(Protocol):
    """An adapter that can say what its agent can do."""

    async def describe(self, agent: AgentRecord) -> Profile | None:
        """What the agent says about itself now; None when it cannot be reached (the catalog
        then keeps what it said last)."""
        ...


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search: ARD result items, best first, and the next page's token."""

    results: list[dict[str, Any]]
    page_token: str | None = None
    referrals: list[dict[str, Any]] | None = None
    #: Response headers a federated search adds (the partners left out, say).
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"results": self.results}
        if self.referrals is not None:
            body["referrals"] = self.referrals
        if self.page_token:
            body["pageToken"] = self.page_token
        return body


#: ``federation: "auto"`` (SPEC.md §12.6): given the caller, the request and the local page,
#: the page with the partners' results merged in.
FederatedSearch = Callable[[Viewer, SearchRequest, SearchPage], Awaitable[SearchPage]]
#: The registry base URLs of ``[discovery] partners``, by domain (those that resolve now).
PartnerRegistries = Callable[[], Awaitable[list[tuple[str, str]]]]


class CatalogService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        domain: str,
        public_url: str,
        adapters: Mapping[str, object],
        policy: Callable[[], Policy],
        partners: PartnerRegistries | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.domain = domain
        self.public_url = public_url.rstrip("/")
        self.adapters = adapters
        self.policy = policy
        self.partners = partners
        #: Set by the runtime's owner to merge partners' answers (``federation: "auto"``).
        self.federated: FederatedSearch | None = None
        self._counts: dict[cat.Scope, tuple[int, float]] = {}

    @property
    def registry_url(self) -> str:
        """This relay's ARD registry base (SPEC.md §12.4)."""
        return f"{self.public_url}/ard"

    # keeping entries current -------------------------------------------------------------------

    async def refresh(self, agent: AgentRecord) -> bool:
        """Ask ``agent``'s adapter what it can do now and keep it; True when the entry changed."""
        adapter = self.adapters.get(agent.kind)
        if not isinstance(adapter, Describes):
            return False
        try:
            profile = await adapter.describe(agent)
        except SynqError as exc:
            log.info("cannot describe %s now: %s", agent.name, exc.message)
            return False
        if profile is None:
            return False
        return await self.store.catalog_update(agent.name, self.clock.now(), profile=profile)

    async def run_once(self) -> int:
        """Refresh every adapter-backed agent, one at a time; how many entries changed."""
        changed = 0
        for agent in await self.store.list_agents():
            if agent.kind != "inbox" and await self.refresh(agent):
                changed += 1
        return changed

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except SynqError as exc:
                log.warning("catalog refresh failed: %s", exc.message)
            await asyncio.sleep(REFRESH_INTERVAL)

    # answering ---------------------------------------------------------------------------------

    def _entries(self, record: CatalogRecord) -> list[dict[str, Any]]:
        return cat.entries(record, self.domain, self.public_url)

    async def _in_scope(self, viewer: Viewer) -> list[CatalogRecord]:
        scope = cat.scope(viewer, self.policy())
        return await self.store.catalog_scope(scope.visibilities, scope.hidden)

    async def _count(self, scope: cat.Scope) -> int:
        """How many entries ``scope`` holds, remembered for ``COUNT_TTL``: it only weighs
        words by rarity, and changes only as agents come, go or change visibility."""
        now = self.clock.monotonic()
        known = self._counts.get(scope)
        if known is not None and now - known[1] < COUNT_TTL:
            return known[0]
        count = await self.store.catalog_count(scope.visibilities, scope.hidden)
        if len(self._counts) >= MAX_COUNTS:
            self._counts.clear()
        self._counts[scope] = (count, now)
        return count

    async def _ranked(
        self, viewer: Viewer, text: str, limit: int
    ) -> list[tuple[CatalogRecord, int]]:
        """The records in scope matching ``text``, best first, with their scores
        (relay.core.catalog.rank). A text without a searchable word matches every record in
        scope, by name, score 0."""
        terms = cat.terms(text)
        scope = cat.scope(viewer, self.policy())
        if not terms:
            records = await self.store.catalog_scope(scope.visibilities, scope.hidden)
            return [(r, 0) for r in records[:limit]]
        matched = await self.store.catalog_matches(
            terms, scope.visibilities, scope.hidden, limit, cat.MAX_MATCHES
        )
        if not matched:
            return []
        ranked = cat.rank(len(terms), matched, await self._count(scope), limit)
        found = await self.store.catalog_records([key for key, _ in ranked])
        # An agent removed between the two reads is left out.
        return [(found[key], points) for key, points in ranked if key in found]

    async def search(self, viewer: Viewer, request: SearchRequest) -> SearchPage:
        """ARD §7.2 for ``viewer``: this relay's entries, then the federation it asked for."""
        end = request.offset + request.page_size
        # Without a filter every record yields at least one entry, so one more record than the
        # page needs tells whether there is a next page; with one, read as deep as paging goes.
        limit = end + 1 if not request.filters else MAX_SEARCH_RESULTS
        found: list[dict[str, Any]] = []
        for record, points in await self._ranked(viewer, request.text, limit):
            for entry in self._entries(record):
                if cat.matches(entry, request.filters):
                    found.append({**entry, "score": points, "source": self.registry_url})
        page = SearchPage(found[request.offset : end], request.next_token(len(found) > end))
        if request.federation == "referrals":
            return SearchPage(page.results, page.page_token, await self.referrals(viewer))
        if request.federation == "auto" and self.federated is not None:
            return await self.federated(viewer, request, page)
        return page

    async def referrals(self, viewer: Viewer) -> list[dict[str, Any]]:
        """ARD §8 ``referrals``: the registries of ``[discovery] partners`` that the domain
        gate lets this relay talk to. Nothing for an anonymous caller or a partner: the list
        of partners is this relay's own business."""
        if viewer.kind not in ("local", "operator") or self.partners is None:
            return []
        policy = self.policy()
        return [
            {
                "identifier": f"urn:air:{domain}:registry:ard",
                "displayName": f"{domain} agent registry",
                "type": cat.REGISTRY_TYPE,
                "url": url,
            }
            for domain, url in await self.partners()
            if policy.domain_permitted(domain)
        ]

    async def explore(self, viewer: Viewer, request: ExploreRequest) -> dict[str, Any]:
        """ARD §7.3 over the entries in scope that match the text and the filter."""
        if request.text.strip():
            ranked = await self._ranked(viewer, request.text, MAX_SEARCH_RESULTS)
            records = [r for r, _ in ranked]
        else:
            records = await self._in_scope(viewer)
        matched = [e for r in records for e in self._entries(r) if cat.matches(e, request.filters)]
        return {"resultType": "facets", "facets": cat.facets(matched, request.facets)}

    async def list(self, viewer: Viewer, request: ListRequest) -> dict[str, Any]:
        """ARD §7.4: the entries in scope, by identifier, filtered, a page at a time."""
        matched = [
            e
            for r in await self._in_scope(viewer)
            for e in self._entries(r)
            if cat.matches(e, request.filters)
        ]
        matched.sort(key=lambda e: str(e["identifier"]))
        end = request.offset + request.page_size
        body: dict[str, Any] = {"items": matched[request.offset : end], "total": len(matched)}
        token = request.next_token(len(matched) > end)
        if token:
            body["pageToken"] = token
        return body

    async def get(self, viewer: Viewer, identifier: str) -> dict[str, Any]:
        """One entry by its identifier; NotFound for one that does not exist or that
        ``viewer`` may not see — the two are indistinguishable, so private agents cannot be
        probed."""
        parsed = cat.parse_identifier(identifier, self.domain)
        record = None if parsed is None else await self.store.catalog_get(parsed[1])
        if record is None or not cat.visible(
            record.visibility, record.agent, viewer, self.policy()
        ):
            raise NotFound("no such entry")
        for entry in self._entries(record):
            if entry["identifier"] == identifier:
                return entry
        raise NotFound("no such entry")

    async def manifest(self) -> dict[str, Any]:
        """The ARD manifest (ARD §4.1) of ``/.well-known/ard.json``: the public entries and the
        registry."""
        public = [e for r in await self._in_scope(Viewer.anonymous()) for e in self._entries(r)][
            :MAX_MANIFEST_ENTRIES
        ]
        registry = {
            "identifier": f"urn:air:{self.domain}:registry:ard",
            "displayName": f"{self.domain} agent registry",
            "type": cat.REGISTRY_TYPE,
            "url": self.registry_url,
            "description": f"Search the agents of {self.domain} (ARD registry API).",
        }
        return {
            "specVersion": "1.0",
            "host": {"displayName": self.domain},
            "entries": [*public, registry],
        }


async def set_operator_fields(
    store: Store,
    name: str,
    now: Any,
    *,
    visibility: str | None,
    description: str | None,
    tags: Sequence[str] | None,
    queries: Sequence[str] | None,
) -> bool:
    """``synq agent add|set``'s catalog options, checked (ValueError) and kept."""
    cat.validate_operator_fields(description, tags, queries)
    return await store.catalog_update(
        name, now, visibility=visibility, description=description, tags=tags, queries=queries
    )
