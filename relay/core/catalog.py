"""Agent discovery, pure (SPEC.md §12): what a catalog entry holds, who may see it, how a
search request reads, how an entry looks on the wire of the Agentic Resource Discovery (ARD)
registry API, and the arithmetic of ranking and paging.

No I/O: the store keeps the records and ranks full text (relay/store/sql/), the catalog service
(relay/delivery/catalog.py) asks the agents and runs searches, the routes
(relay/server/ard.py) read HTTP. Everything here is tested with tables.

A search, in order (the steps of ``CatalogService.search``)::

    1. parse      parse_search(body) → SearchRequest; every malformed member, unknown filter
                  key or input past a limit is InvalidArgument (400 INVALID_ARGUMENT)
    2. scope      scope(viewer, policy) → the visibilities the caller may see and the agents
                  whose own rules hide them from it (the same answer as ``visible``)
    3. match      the store: the agents in scope whose full-text index matches any term of
                  the text (``terms``), with the store's stemming, and which terms each matched
    4. rank       rank(…) → agents best first, with scores 0–100
    5. expand     entries(record) → one ARD entry per face of the agent; ``matches`` applies
                  the filters
    6. page       PageToken: an offset into the ranked list, bound to the request it pages
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, get_args

from relay.core.address import Address
from relay.core.errors import MalformedRequest, Unauthenticated
from relay.core.policy import AgentRule, Policy
from relay.core.ratelimit import Rate

__all__ = [
    "A2A_TYPE",
    "MAX_DESCRIPTION_CHARS",
    "MAX_FILTER_KEYS",
    "MAX_FILTER_VALUES",
    "MAX_FILTER_VALUE_CHARS",
    "MAX_MATCHES",
    "MAX_PAGE_SIZE",
    "MAX_QUERIES",
    "MAX_QUERY_CHARS",
    "MAX_QUERY_TERMS",
    "MAX_SEARCH_RESULTS",
    "MAX_TAGS",
    "MCP_TYPE",
    "REGISTRY_TYPE",
    "SEARCH_RATE",
    "VISIBILITIES",
    "BadPartnerSignature",
    "CatalogRecord",
    "ExploreRequest",
    "Facet",
    "Federation",
    "Filter",
    "InvalidArgument",
    "ListRequest",
    "PageToken",
    "Profile",
    "Scope",
    "SearchRequest",
    "Skill",
    "Tool",
    "Viewer",
    "Visibility",
    "document",
    "entries",
    "facets",
    "identifier",
    "matches",
    "parse_explore",
    "parse_identifier",
    "parse_list",
    "parse_search",
    "profile_from_card",
    "rank",
    "scope",
    "terms",
    "validate_operator_fields",
    "visible",
]

_K = TypeVar("_K", int, str)

Visibility = Literal["private", "local", "partners", "public"]
VISIBILITIES: Final[tuple[str, ...]] = get_args(Visibility)
DEFAULT_VISIBILITY: Final[Visibility] = "local"

#: ARD media types (ARD §4.1, §4.2): an A2A agent card, an MCP server card, a registry.
A2A_TYPE: Final = "application/a2a-agent-card+json"
MCP_TYPE: Final = "application/mcp-server-card+json"
REGISTRY_TYPE: Final = "application/ai-registry+json"

# --- named limits (SPEC.md §12.5), each with the abuse it stops ----------------------------------

#: Characters of a search text. Stops a caller from making one search cost a full-text parse
#: and a match of thousands of terms; a plain-language need is a sentence.
MAX_QUERY_CHARS: Final = 512
#: Search terms kept from a text (the rest ignored): bounds the OR of the full-text query, whose
#: cost grows with every term.
MAX_QUERY_TERMS: Final = 32
#: Results per page (ARD §7.2: max 100). Stops one request from reading the whole catalog.
MAX_PAGE_SIZE: Final = 100
DEFAULT_PAGE_SIZE: Final = 10
DEFAULT_LIST_PAGE_SIZE: Final = 20
#: Deepest result a search pages to (offset + page size). Ranked paging re-ranks from the top;
#: stops a caller walking pages to make each request rank and skip ever more rows.
MAX_SEARCH_RESULTS: Final = 1000
#: Keys in one filter, values per key, characters per value: bounds the work of matching every
#: candidate against the filter, and the memory of one request.
MAX_FILTER_KEYS: Final = 16
MAX_FILTER_VALUES: Final = 32
MAX_FILTER_VALUE_CHARS: Final = 256
#: Facets one explore asks for, buckets per facet.
MAX_FACETS: Final = 8
MAX_FACET_BUCKETS: Final = 100
#: What the operator may give an inbox-only agent (``synq agent add|set``), and what is kept of
#: what an agent says about itself: bounds one agent's share of the index and of every answer.
MAX_DESCRIPTION_CHARS: Final = 2000
MAX_TAGS: Final = 32
MAX_TAG_CHARS: Final = 64
MAX_QUERIES: Final = 5
MIN_QUERIES: Final = 2
MAX_QUERY_EXAMPLE_CHARS: Final = 200
MAX_SKILLS: Final = 64
MAX_TOOLS: Final = 128
MAX_EXAMPLES: Final = 5
MAX_NAME_CHARS: Final = 200
MAX_PARAMS: Final = 32
#: A page token's length: it is ours, and a longer one is not.
MAX_PAGE_TOKEN_CHARS: Final = 128

#: Matching entries one search reads from the store to rank (``rank``). Stops a need made of
#: common words from making each search read and rank the whole catalog of a very large relay;
#: past it, some matching entries are not considered.
MAX_MATCHES: Final = 20_000

#: Words that say nothing about a capability ("who can …", "find me an agent that …"). Left
#: out of the OR-ed terms so that they do not match every description that uses them.
_STOP_WORDS: Final = frozenset(
    [
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "could",
        "do",
        "does",
        "find",
        "for",
        "from",
        "get",
        "has",
        "have",
        "help",
        "i",
        "in",
        "into",
        "is",
        "it",
        "me",
        "my",
        "need",
        "of",
        "on",
        "or",
        "our",
        "please",
        "some",
        "someone",
        "something",
        "that",
        "the",
        "this",
        "to",
        "us",
        "want",
        "we",
        "what",
        "which",
        "who",
        "will",
        "with",
        "would",
        "you",
        "agent",
        "agents",
    ]
)
_TERM_RE: Final = re.compile(r"[a-z0-9]+")


#: Searches (search, explore, list, one entry) per second per caller: per local agent, per
#: partner domain, and per source address for anonymous callers. Each costs a full-text match
#: and the building of up to a page of entries; stops one caller from taking the store's read
#: capacity from delivery. Generous for an agent looking up who can help before each task.
SEARCH_RATE: Final = Rate(per_second=20.0, burst=100.0)


class BadPartnerSignature(Unauthenticated):
    """A request that claims to come from a partner relay but whose signature does not hold
    (unsigned where a signature is announced, a bad or replayed one): 401, never a partner's
    view (SPEC.md §12.6)."""


class InvalidArgument(MalformedRequest):
    """A search, explore or list request that is malformed or past a named limit: ARD's
    ``400 INVALID_ARGUMENT`` (ARD Appendix B)."""


# --- the caller ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks (SPEC.md §12.3): nobody known, the relay's operator (``synq find``), one of
    its local agents, or a partner relay speaking for its domain."""

    kind: Literal["anonymous", "operator", "local", "partner"]
    #: The local agent's address (``local``) or the partner's domain (``partner``).
    name: str = ""

    @classmethod
    def anonymous(cls) -> Viewer:
        return cls("anonymous")

    @classmethod
    def operator(cls) -> Viewer:
        return cls("operator")

    @classmethod
    def local(cls, address: str) -> Viewer:
        return cls("local", address)

    @classmethod
    def partner(cls, domain: str) -> Viewer:
        return cls("partner", domain)


#: What each kind of caller may see, before agent rules.
_SEES: Final[Mapping[str, frozenset[str]]] = {
    "anonymous": frozenset({"public"}),
    "operator": frozenset({"local", "partners", "public"}),
    "local": frozenset({"local", "partners", "public"}),
    "partner": frozenset({"partners", "public"}),
}


def _rule_admits(rule: AgentRule | None, viewer: Viewer) -> bool:
    """An agent's own rules (SPEC.md §11.3) applied to a caller. A local agent is judged as a
    sender by its address; a partner domain by the patterns that name its whole domain (or
    ``*``): an agent that lets in only one address of that domain is not listed to the domain;
    an anonymous caller by ``*`` alone. The operator is not subject to them."""
    if rule is None or viewer.kind == "operator":
        return True
    if viewer.kind == "local":
        return rule.permits(Address.parse(viewer.name))
    if viewer.kind == "partner":
        kinds = {"any", "domain"}
        probe = Address("\x00", viewer.name)  # a local part no address pattern names
    else:
        kinds = {"any"}
        probe = Address("\x00", "\x00")
    narrowed = AgentRule(
        frozenset(p for p in rule.allow if p.kind in kinds),
        frozenset(p for p in rule.deny if p.kind in kinds),
    )
    if rule.allow and not narrowed.allow:
        return False  # an allow list that names only others
    return narrowed.permits(probe)


def visible(visibility: str, agent: str, viewer: Viewer, policy: Policy) -> bool:
    """Whether local agent ``agent`` (its local part), listed with ``visibility``, is shown to
    ``viewer``: ``private`` never; the rest by the caller's kind; a partner whose domain the
    domain gate refuses sees nothing; and an agent's own allow/deny list limits who sees it,
    as it limits who may message it."""
    if visibility not in _SEES[viewer.kind]:
        return False
    if viewer.kind == "partner" and not policy.domain_permitted(viewer.name):
        return False
    return _rule_admits(policy.agents.get(agent), viewer)


@dataclass(frozen=True, slots=True)
class Scope:
    """``visible`` as the store applies it: the visibilities the caller may see, and the
    agents hidden from it by their own rules."""

    visibilities: tuple[str, ...]
    hidden: tuple[str, ...]


def scope(viewer: Viewer, policy: Policy) -> Scope:
    if viewer.kind == "partner" and not policy.domain_permitted(viewer.name):
        return Scope((), ())
    hidden = tuple(
        sorted(name for name, rule in policy.agents.items() if not _rule_admits(rule, viewer))
    )
    return Scope(tuple(sorted(_SEES[viewer.kind])), hidden)


# --- what an agent can do -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skill:
    id: str
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str = ""
    #: The property names of its input schema.
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    """What an agent says about itself: from its A2A card, or its MCP server's tool list."""

    name: str = ""
    description: str = ""
    version: str = ""
    skills: tuple[Skill, ...] = ()
    tools: tuple[Tool, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "skills": [
                {
                    "id": s.id,
                    "name": s.name,
                    "description": s.description,
                    "tags": list(s.tags),
                    "examples": list(s.examples),
                }
                for s in self.skills
            ],
            "tools": [
                {"name": t.name, "description": t.description, "params": list(t.params)}
                for t in self.tools
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            version=str(data.get("version", "")),
            skills=tuple(
                Skill(
                    id=str(s["id"]),
                    name=str(s.get("name", "")),
                    description=str(s.get("description", "")),
                    tags=tuple(map(str, s.get("tags", ()))),
                    examples=tuple(map(str, s.get("examples", ()))),
                )
                for s in data.get("skills", ())
            ),
            tools=tuple(
                Tool(
                    name=str(t["name"]),
                    description=str(t.get("description", "")),
                    params=tuple(map(str, t.get("params", ()))),
                )
                for t in data.get("tools", ())
            ),
        )


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _texts(value: Any, count: int, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v[:limit] for v in value if isinstance(v, str) and v)[:count]


def profile_from_card(
    card: Mapping[str, Any], tools: Sequence[Mapping[str, Any]] | None = None
) -> Profile:
    """A profile from an A2A agent card (A2A 1.0 §8: ``name``, ``description``, ``version``,
    ``skills`` with ``id``, ``name``, ``description``, ``tags``, ``examples``) and, for an MCP
    server, its tools as ``tools/list`` gives them (MCP "Tools": ``name``, ``description``,
    ``inputSchema.properties``). Whatever is missing or of another type is left out; what is
    long is cut to the named limits."""
    skills: list[Skill] = []
    raw_skills = card.get("skills")
    for raw in raw_skills if isinstance(raw_skills, list) else []:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
            continue
        skills.append(
            Skill(
                id=raw["id"][:MAX_NAME_CHARS],
                name=_text(raw.get("name"), MAX_NAME_CHARS),
                description=_text(raw.get("description"), MAX_DESCRIPTION_CHARS),
                tags=_texts(raw.get("tags"), MAX_TAGS, MAX_TAG_CHARS),
                examples=_texts(raw.get("examples"), MAX_EXAMPLES, MAX_QUERY_EXAMPLE_CHARS),
            )
        )
        if len(skills) == MAX_SKILLS:
            break
    listed: list[Tool] = []
    for raw in tools or ():
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            continue
        schema = raw.get("inputSchema")
        props = schema.get("properties") if isinstance(schema, dict) else None
        params = (
            tuple(p[:MAX_NAME_CHARS] for p in props if isinstance(p, str))[:MAX_PARAMS]
            if (isinstance(props, dict))
            else ()
        )
        listed.append(
            Tool(
                name=name[:MAX_NAME_CHARS],
                description=_text(raw.get("description"), MAX_DESCRIPTION_CHARS),
                params=params,
            )
        )
        if len(listed) == MAX_TOOLS:
            break
    return Profile(
        name=_text(card.get("name"), MAX_NAME_CHARS),
        description=_text(card.get("description"), MAX_DESCRIPTION_CHARS),
        version=_text(card.get("version"), MAX_NAME_CHARS),
        skills=tuple(skills),
        tools=tuple(listed),
    )


@dataclass(frozen=True, slots=True)
class CatalogRecord:
    """One local agent as the catalog holds it."""

    agent: str
    kind: str
    visibility: str = DEFAULT_VISIBILITY
    #: What the operator said (``synq agent add|set``): for inbox-only agents the only source.
    description: str = ""
    tags: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()
    #: What the agent said about itself, as last seen; None before it was first reached.
    profile: Profile | None = None
    #: ISO 8601, when the record last changed.
    updated: str = ""


def validate_operator_fields(
    description: str | None, tags: Sequence[str] | None, queries: Sequence[str] | None
) -> None:
    """What ``synq agent add|set`` may set (SPEC.md §12.1); ValueError naming the problem."""
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise ValueError(f"a description has at most {MAX_DESCRIPTION_CHARS} characters")
    if tags is not None:
        if len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        for tag in tags:
            if not tag.strip() or len(tag) > MAX_TAG_CHARS:
                raise ValueError(f"a tag has 1 to {MAX_TAG_CHARS} characters: {tag[:80]!r}")
    if queries is not None and queries:
        if not MIN_QUERIES <= len(queries) <= MAX_QUERIES:
            raise ValueError(
                f"give {MIN_QUERIES} to {MAX_QUERIES} representative queries (or none)"
            )
        for query in queries:
            if not query.strip() or len(query) > MAX_QUERY_EXAMPLE_CHARS:
                raise ValueError(
                    f"a query has 1 to {MAX_QUERY_EXAMPLE_CHARS} characters: {query[:80]!r}"
                )


def _description(record: CatalogRecord) -> str:
    profile = record.profile
    return record.description or (profile.description if profile else "")


def _tags(record: CatalogRecord) -> list[str]:
    seen: dict[str, None] = dict.fromkeys(record.tags)
    for skill in record.profile.skills if record.profile else ():
        seen.update(dict.fromkeys(skill.tags))
    return list(seen)[:MAX_TAGS]


def _capabilities(record: CatalogRecord) -> list[str]:
    profile = record.profile
    if profile is None:
        return []
    names = dict.fromkeys([s.id for s in profile.skills] + [t.name for t in profile.tools])
    return list(names)


def _queries(record: CatalogRecord) -> list[str]:
    """The operator's queries, else the skills' examples; ARD wants 2 to 5 or none."""
    found = list(record.queries)
    if not found and record.profile is not None:
        found = list(dict.fromkeys(e for s in record.profile.skills for e in s.examples))
    found = found[:MAX_QUERIES]
    return found if len(found) >= MIN_QUERIES else []


def document(record: CatalogRecord) -> str:
    """The text the full-text index holds for an agent (besides its name): descriptions, tags,
    skills (names, descriptions, examples), tools (names, descriptions, parameter names) and
    representative queries. Identifiers such as ``translate_invoice`` are also split into words
    so that a plain-language need matches them."""
    parts: list[str] = [record.description, *record.tags, *record.queries]
    profile = record.profile
    if profile is not None:
        parts += [profile.name, profile.description]
        for s in profile.skills:
            parts += [s.id, s.name, s.description, *s.tags, *s.examples]
        for t in profile.tools:
            parts += [t.name, t.description, *t.params]
    text = "\n".join(p for p in parts if p)
    return text + "\n" + " ".join(re.split(r"[_\-.]+", " ".join(_identifiers(record))))


def _identifiers(record: CatalogRecord) -> list[str]:
    profile = record.profile
    if profile is None:
        return [record.agent]
    return [record.agent] + [s.id for s in profile.skills] + [t.name for t in profile.tools]


def terms(text: str) -> list[str]:
    """The search terms of a plain-language text: lower-case words of letters and digits,
    without stop words, each once, at most ``MAX_QUERY_TERMS``. Nothing but ``[a-z0-9]``
    reaches the full-text query, so no query syntax of either dialect can be injected."""
    found = dict.fromkeys(w for w in _TERM_RE.findall(text.lower()) if w not in _STOP_WORDS)
    return list(found)[:MAX_QUERY_TERMS]


def rank(
    terms_count: int, matched: Iterable[tuple[int, _K, int]], total: int, limit: int
) -> list[tuple[_K, int]]:
    """The ``limit`` best entries for a need of ``terms_count`` terms, best first, each with
    ARD's 0–100 score (§7.2). ``matched`` is what the store's full-text index (with its
    stemming) found, grouped by the set of terms matched: rows (bit set — bit i for the i-th
    term of ``terms`` —, an entry's key, how many entries matched exactly that set), at least
    the ``limit`` smallest keys of each set; ``total`` is how many entries the caller may see,
    matching or not.

    Coordination and rarity, as the first full-text engines ranked (Salton's coordination
    level; Spärck Jones's inverse document frequency): ``coverage`` is the share of the need's
    terms an entry matches, ``weight`` the same share weighted by each term's rarity,
    ln(1 + total / entries matching it). The score is 60 % coverage and 40 % weight, so an
    entry that speaks of everything the need names scores 100 and one that shares only a
    common word scores low; ties go to the rarer words, then the older entry. Computed from the
    matches alone, it costs the same on both stores and does not depend on how many agents the
    relay has (BM25's weights vanish in a catalog of a handful). Entries that match the same
    terms score the same, so only the groups are scored and sorted."""
    if terms_count < 1 or limit < 1:
        return []
    sizes: dict[int, int] = {}
    groups: dict[int, list[_K]] = {}
    for mask, key, size in matched:
        sizes[mask] = size
        groups.setdefault(mask, []).append(key)
    frequency = [0] * terms_count
    for mask, size in sizes.items():
        for i in range(terms_count):
            if mask >> i & 1:
                frequency[i] += size
    total = max(total, 1)
    rarity = [math.log(1 + total / max(1, f)) for f in frequency]
    whole = sum(rarity)
    scored: list[tuple[int, float, int]] = []
    for mask in groups:
        found = [i for i in range(terms_count) if mask >> i & 1]
        coverage = len(found) / terms_count
        weight = sum(rarity[i] for i in found) / whole
        points = max(1, min(100, round(100 * (0.6 * coverage + 0.4 * weight))))
        scored.append((points, weight, mask))
    scored.sort(key=lambda g: (-g[0], -g[1]))
    ranked: list[tuple[_K, int]] = []
    for points, _, mask in scored:
        need = limit - len(ranked)
        if need <= 0:
            break
        ranked += [(key, points) for key in heapq.nsmallest(need, groups[mask])]
    return ranked


# --- ARD entries --------------------------------------------------------------------------------


def identifier(domain: str, agent: str, kind: str = "agent") -> str:
    """``urn:air:<domain>:<namespace>:<local>`` (ARD §4.2.1): ``agent`` for the A2A entry,
    ``mcp`` for an MCP-backed agent's server entry."""
    return f"urn:air:{domain}:{kind}:{agent}"


_IDENTIFIER_RE: Final = re.compile(r"urn:air:([a-z0-9.-]+):(agent|mcp):([a-z0-9][a-z0-9._-]{0,63})")


def parse_identifier(text: str, domain: str) -> tuple[str, str] | None:
    """(namespace, local part) of one of this relay's identifiers, or None."""
    m = _IDENTIFIER_RE.fullmatch(text)
    if m is None or m.group(1) != domain:
        return None
    return m.group(2), m.group(3)


def entries(record: CatalogRecord, domain: str, public_url: str) -> list[dict[str, Any]]:
    """The ARD catalog entries (ARD §4.2) of one agent: the A2A entry, whose ``url`` is its card
    at the relay's A2A face; for an MCP-backed agent also an MCP server entry at
    ``/mcp/<address>``. ``metadata.address`` is the address to message."""
    base = public_url.rstrip("/")
    address = f"{record.agent}@{domain}"
    profile = record.profile
    common: dict[str, Any] = {
        "displayName": (profile.name if profile and profile.name else record.agent),
    }
    description = _description(record)
    if description:
        common["description"] = description
    tags = _tags(record)
    if tags:
        common["tags"] = tags
    caps = _capabilities(record)
    if caps:
        common["capabilities"] = caps
    queries = _queries(record)
    if queries:
        common["representativeQueries"] = queries
    if profile is not None and profile.version:
        common["version"] = profile.version
    if record.updated:
        common["updatedAt"] = record.updated
    common["metadata"] = {"address": address, "kind": record.kind}
    found = [
        {
            "identifier": identifier(domain, record.agent),
            "type": A2A_TYPE,
            "url": f"{base}/a2a/{address}/.well-known/agent-card.json",
            **common,
        }
    ]
    if record.kind == "mcp":
        found.append(
            {
                "identifier": identifier(domain, record.agent, "mcp"),
                "type": MCP_TYPE,
                "url": f"{base}/mcp/{address}",
                **common,
            }
        )
    return found


# --- requests -----------------------------------------------------------------------------------

Filter = Mapping[str, tuple[str, ...]]

#: Filter keys (ARD §7.1) this registry supports; ``metadata.<key>`` besides.
FILTER_KEYS: Final = frozenset(
    {"type", "tags", "capabilities", "publisher", "identifier", "displayName", "version"}
)
_METADATA_KEY_RE: Final = re.compile(r"metadata\.[A-Za-z0-9_-]{1,64}")


def _parse_filter(raw: Any) -> Filter:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("query.filter must be an object")
    if len(raw) > MAX_FILTER_KEYS:
        raise InvalidArgument(f"query.filter has more than {MAX_FILTER_KEYS} keys")
    parsed: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if key not in FILTER_KEYS and not _METADATA_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"query.filter: unsupported field {key[:80]!r}")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"query.filter.{key}: a string or an array of strings")
        if not values:
            raise InvalidArgument(f"query.filter.{key}: an empty array matches nothing")
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidArgument(f"query.filter.{key} has more than {MAX_FILTER_VALUES} values")
        if any(len(v) > MAX_FILTER_VALUE_CHARS for v in values):
            raise InvalidArgument(
                f"query.filter.{key}: a value is longer than {MAX_FILTER_VALUE_CHARS} characters"
            )
        parsed[key] = tuple(values)
    return parsed


def _filter_values(entry: Mapping[str, Any], key: str) -> list[str]:
    if key == "publisher":
        parts = str(entry.get("identifier", "")).split(":")
        return [parts[2]] if len(parts) > 2 else []
    if key.startswith("metadata."):
        value = entry.get("metadata", {}).get(key.removeprefix("metadata."))
        return [] if value is None else [str(value)]
    value = entry.get(key)
    if isinstance(value, list):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def matches(entry: Mapping[str, Any], filters: Filter) -> bool:
    """ARD §7.1: every key matches (AND); within a key any value (OR); against an array, any
    element. Tags and capabilities compare case-insensitively, the rest exactly."""
    for key, wanted in filters.items():
        have = _filter_values(entry, key)
        if key in ("tags", "capabilities", "displayName"):
            want = {w.casefold() for w in wanted}
            if not any(h.casefold() in want for h in have):
                return False
        elif not any(h in wanted for h in have):
            return False
    return True


Federation = Literal["auto", "referrals", "none"]


def _page_size(raw: Any, default: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidArgument("pageSize must be an integer")
    if not 1 <= raw <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
    return raw


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where the next page starts: an offset into the ranked (or listed) entries, and a digest
    of the request it belongs to — a token replayed with another query is refused rather than
    answered with a page of something else."""

    offset: int
    digest: str

    def encode(self) -> str:
        raw = f"{self.offset}.{self.digest}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: Any, digest: str, limit: int = MAX_SEARCH_RESULTS) -> int:
        """The offset ``text`` names for the request of ``digest``; InvalidArgument otherwise."""
        if not isinstance(text, str) or not text or len(text) > MAX_PAGE_TOKEN_CHARS:
            raise InvalidArgument("pageToken is not a token this registry gave")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            offset_text, _, got = raw.partition(".")
            offset = int(offset_text)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("pageToken is not a token this registry gave") from None
        if got != digest or not 0 < offset < limit:
            raise InvalidArgument("pageToken does not belong to this request")
        return offset


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """ARD §7.2 ``POST /search``."""

    text: str
    filters: Filter = field(default_factory=dict)
    federation: Federation = "auto"
    page_size: int = DEFAULT_PAGE_SIZE
    offset: int = 0

    @property
    def terms(self) -> list[str]:
        return terms(self.text)

    def digest(self) -> str:
        return _digest("search", self.text, dict(self.filters))

    def partner_body(self) -> dict[str, Any]:
        """The ARD search body a partner registry is asked (SPEC.md §12.6): the same words and
        filters, for a first page of this size; relay.federation.search sets ``federation``."""
        query: dict[str, Any] = {"text": self.text}
        if self.filters:
            query["filter"] = {key: list(values) for key, values in self.filters.items()}
        return {"query": query, "pageSize": self.page_size}

    def next_token(self, more: bool) -> str | None:
        end = self.offset + self.page_size
        if not more or end >= MAX_SEARCH_RESULTS:
            return None
        return PageToken(end, self.digest()).encode()


def _parse_query(raw: Any, *, text_required: bool) -> tuple[str, Filter]:
    if raw is None and not text_required:
        return "", {}
    if not isinstance(raw, dict):
        raise InvalidArgument("query must be an object")
    unknown = set(raw) - {"text", "filter"}
    if unknown:
        raise InvalidArgument(f"query: unknown member {sorted(unknown)[0][:80]!r}")
    text = raw.get("text")
    if text is None and not text_required:
        text = ""
    if not isinstance(text, str):
        raise InvalidArgument("query.text must be a string")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"query.text is longer than {MAX_QUERY_CHARS} characters")
    return text, _parse_filter(raw.get("filter"))


def parse_search(body: Any, *, default_federation: Federation = "auto") -> SearchRequest:
    """A ``POST /search`` body (ARD §7.2); InvalidArgument for anything else."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    unknown = set(body) - {"query", "federation", "pageSize", "pageToken"}
    if unknown:
        raise InvalidArgument(f"unknown member {sorted(unknown)[0][:80]!r}")
    if "query" not in body:
        raise InvalidArgument("query is required")
    text, filters = _parse_query(body["query"], text_required=True)
    federation = body.get("federation", default_federation)
    if federation not in ("auto", "referrals", "none"):
        raise InvalidArgument('federation must be "auto", "referrals" or "none"')
    request = SearchRequest(
        text=text,
        filters=filters,
        federation=federation,
        page_size=_page_size(body.get("pageSize"), DEFAULT_PAGE_SIZE),
    )
    if body.get("pageToken") is not None:
        offset = PageToken.decode(body["pageToken"], request.digest())
        request = SearchRequest(text, filters, federation, request.page_size, offset)
    return request


@dataclass(frozen=True, slots=True)
class Facet:
    field: str
    limit: int = 20
    min_count: int = 1


@dataclass(frozen=True, slots=True)
class ExploreRequest:
    """ARD §7.3 ``POST /explore``."""

    text: str
    filters: Filter
    facets: tuple[Facet, ...]


def _int(raw: Any, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise InvalidArgument(f"{name} must be an integer between {lo} and {hi}")
    return raw


def parse_explore(body: Any) -> ExploreRequest:
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    unknown = set(body) - {"query", "resultType"}
    if unknown:
        raise InvalidArgument(f"unknown member {sorted(unknown)[0][:80]!r}")
    text, filters = _parse_query(body.get("query"), text_required=False)
    result_type = body.get("resultType")
    if not isinstance(result_type, dict) or not isinstance(result_type.get("facets"), list):
        raise InvalidArgument("resultType.facets (an array) is required")
    if set(result_type) - {"facets"}:
        raise InvalidArgument("resultType: only facets are supported")
    raw_facets = result_type["facets"]
    if len(raw_facets) > MAX_FACETS:
        raise InvalidArgument(f"resultType.facets has more than {MAX_FACETS} members")
    facets: list[Facet] = []
    for raw in raw_facets:
        if not isinstance(raw, dict) or set(raw) - {"field", "limit", "minCount"}:
            raise InvalidArgument("a facet is an object of field, limit and minCount")
        name = raw.get("field")
        if not isinstance(name, str) or (
            name not in FILTER_KEYS and not _METADATA_KEY_RE.fullmatch(name)
        ):
            raise InvalidArgument(f"facet field {str(name)[:80]!r} is not supported")
        facets.append(
            Facet(
                name,
                _int(raw.get("limit"), "limit", 20, 1, MAX_FACET_BUCKETS),
                _int(raw.get("minCount"), "minCount", 1, 1, 1_000_000),
            )
        )
    return ExploreRequest(text, filters, tuple(facets))


def facets(found: Iterable[Mapping[str, Any]], wanted: Sequence[Facet]) -> dict[str, Any]:
    """ARD §7.3's ``facets`` over the matched entries."""
    entries_list = list(found)
    result: dict[str, Any] = {}
    for facet in wanted:
        counts: dict[str, int] = {}
        for entry in entries_list:
            for value in dict.fromkeys(_filter_values(entry, facet.field)):
                counts[value] = counts.get(value, 0) + 1
        ranked = sorted(
            ((v, c) for v, c in counts.items() if c >= facet.min_count),
            key=lambda vc: (-vc[1], vc[0]),
        )
        shown = ranked[: facet.limit]
        body: dict[str, Any] = {"buckets": [{"value": v, "count": c} for v, c in shown]}
        other = sum(c for _, c in ranked[facet.limit :])
        if other:
            body["otherCount"] = other
        result[facet.field] = body
    return result


@dataclass(frozen=True, slots=True)
class ListRequest:
    """ARD §7.4 ``GET /agents``: Appendix A's filter (``type``, ``publisherId``,
    ``displayName``; ``AND`` between clauses), ordered by identifier."""

    filters: Filter
    page_size: int = DEFAULT_LIST_PAGE_SIZE
    offset: int = 0

    def digest(self) -> str:
        return _digest("list", dict(self.filters))

    def next_token(self, more: bool) -> str | None:
        end = self.offset + self.page_size
        return PageToken(end, self.digest()).encode() if more else None


_CLAUSE_RE: Final = re.compile(r"\s*(type|publisherId|displayName)\s*=\s*'([^']{0,256})'\s*")
_LIST_KEYS: Final = {"type": "type", "publisherId": "publisher", "displayName": "displayName"}


def parse_list(query: Mapping[str, str]) -> ListRequest:
    """The query parameters of ``GET /agents``: ``filter`` is clauses ``field = 'a,b'`` joined
    by ``AND`` (Appendix A), ``pageSize`` 1–100, ``pageToken``."""
    unknown = set(query) - {"filter", "orderBy", "pageSize", "pageToken"}
    if unknown:
        raise InvalidArgument(f"unknown parameter {sorted(unknown)[0][:80]!r}")
    filters: dict[str, tuple[str, ...]] = {}
    text = query.get("filter", "").strip()
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"filter is longer than {MAX_QUERY_CHARS} characters")
    if text:
        for clause in re.split(r"\s+AND\s+", text):
            m = _CLAUSE_RE.fullmatch(clause)
            if m is None:
                raise InvalidArgument(
                    "filter: clauses are type|publisherId|displayName = '…' joined by AND"
                )
            values = tuple(v.strip() for v in m.group(2).split(",") if v.strip())
            if len(values) > MAX_FILTER_VALUES:
                raise InvalidArgument(f"filter: more than {MAX_FILTER_VALUES} values")
            filters[_LIST_KEYS[m.group(1)]] = values
    order = query.get("orderBy")
    if order is not None and order.strip() not in ("", "identifier", "displayName"):
        raise InvalidArgument("orderBy: identifier or displayName")
    size_text = query.get("pageSize")
    size = DEFAULT_LIST_PAGE_SIZE
    if size_text is not None:
        if not size_text.isdigit():
            raise InvalidArgument("pageSize must be an integer")
        size = _page_size(int(size_text), DEFAULT_LIST_PAGE_SIZE)
    request = ListRequest(filters, size)
    token = query.get("pageToken")
    if token:
        request = ListRequest(filters, size, PageToken.decode(token, request.digest(), limit=10**9))
    return request
