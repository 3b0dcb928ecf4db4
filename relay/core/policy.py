"""Partner policy: which domains this relay federates with, and who may message each local agent.

Pure arithmetic over normalised addresses: no I/O, no clock. The relay asks one question,
:meth:`Policy.refusal`, for every (sender, recipient) pair it is about to take custody of — local
submissions (SPEC.md §6.2, refused ``403 forbidden``) and envelopes from partner relays (§8,
refused per recipient with ``5.7.1``) — and gets back ``None`` or the reason for a refusal.

Two gates, in this order::

    1. domain gate (relay-wide)   the other party's domain: listed in ``deny`` → refused;
                                   listed in ``allow`` → passes; otherwise ``default``.
                                   The relay's own domain always passes.
    2. agent rules (per recipient) the sender against the local recipient's patterns:
                                   ``local@domain`` (one address), ``domain`` (every address
                                   there), ``*`` (anyone the domain gate let through).
                                   The most specific matching pattern decides; at equal
                                   specificity ``deny`` wins. No match: allowed unless the
                                   agent has an ``allow`` list.

The domain gate applies in both directions, as Synapse's ``federation_domain_whitelist`` does:
a relay that refuses a domain's envelopes does not send to it either, so a ``default = "deny"``
relay is a closed federation of the domains it lists. Agent rules only ever narrow the gate:
``*`` in an agent's ``allow`` means "whoever the relay lets in", never "every domain".

Delivery-status envelopes answering an envelope the recipient itself sent (``kind: "dsn"`` from
``mailer-daemon@<the domain it was sent to>``) pass the agent rules but not the domain gate: an
agent that accepts messages only from its colleagues must still learn that its own message to a
partner bounced. The caller establishes that the DSN answers such an envelope (it needs the
store); this module only takes its word as ``bounce_of_own=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from relay.core.address import Address, normalize_domain, normalize_local

__all__ = ["ANY", "AgentRule", "Default", "Pattern", "Policy"]

Default = Literal["allow", "deny"]

#: The pattern that matches every sender the domain gate let through.
ANY: Final = "*"

#: Specificity of a pattern kind: the most specific matching pattern decides.
_SPECIFICITY: Final = {"any": 0, "domain": 1, "address": 2}


@dataclass(frozen=True, slots=True, order=True)
class Pattern:
    """One entry of an agent's ``allow`` or ``deny`` list, normalised at parse time so that
    ``Globex.TEST`` and ``globex.test`` are one pattern."""

    kind: Literal["any", "domain", "address"]
    value: str

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """``*``, a domain, or an address; raise InvalidAddress for anything else."""
        if text.strip() == ANY:
            return cls("any", ANY)
        if "@" in text:
            return cls("address", str(Address.parse(text)))
        return cls("domain", normalize_domain(text))

    @property
    def specificity(self) -> int:
        return _SPECIFICITY[self.kind]

    def matches(self, sender: Address) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "domain":
            return sender.domain == self.value
        return str(sender) == self.value

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class AgentRule:
    """Who may message one local agent."""

    allow: frozenset[Pattern] = frozenset()
    deny: frozenset[Pattern] = frozenset()

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> AgentRule:
        rule = cls(frozenset(map(Pattern.parse, allow)), frozenset(map(Pattern.parse, deny)))
        both = rule.allow & rule.deny
        if both:
            # Deny would win anyway; a pattern in both lists is a typo, not a policy.
            raise ValueError(f"{sorted(both)[0]} is both allowed and denied")
        return rule

    def permits(self, sender: Address) -> bool:
        best = -1
        denied = False
        for pattern in self.deny:
            if pattern.matches(sender) and pattern.specificity > best:
                best, denied = pattern.specificity, True
        for pattern in self.allow:
            # Strictly more specific than the best deny: at equal specificity deny wins.
            if pattern.matches(sender) and pattern.specificity > best:
                best, denied = pattern.specificity, False
        if best < 0:
            return not self.allow
        return not denied


@dataclass(frozen=True, slots=True)
class Policy:
    """The partner policy of the relay for ``domain``. Build with :meth:`build`."""

    domain: str
    default: Default = "allow"
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    agents: Mapping[str, AgentRule] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        domain: str,
        *,
        default: Default = "allow",
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        agents: Mapping[str, tuple[Iterable[str], Iterable[str]]] | None = None,
    ) -> Policy:
        """Normalise and check a policy; raise ValueError or InvalidAddress with a message that
        names the offending entry."""
        own = normalize_domain(domain)
        allowed = frozenset(normalize_domain(d) for d in allow)
        denied = frozenset(normalize_domain(d) for d in deny)
        if allowed & denied:
            raise ValueError(f"{sorted(allowed & denied)[0]} is both allowed and denied")
        if own in denied:
            raise ValueError(f"{own} is this relay's own domain; it cannot be denied")
        rules: dict[str, AgentRule] = {}
        for name, (agent_allow, agent_deny) in (agents or {}).items():
            local = normalize_local(name)
            if local in rules:
                raise ValueError(f"agent {local} has two rule sets")
            rules[local] = AgentRule.parse(agent_allow, agent_deny)
        return cls(own, default, allowed, denied, rules)

    @classmethod
    def open(cls, domain: str) -> Policy:
        """Everyone may message everyone: the policy of a relay without a ``[policy]`` section."""
        return cls.build(domain)

    def domain_permitted(self, domain: str) -> bool:
        """The domain gate, for a canonical domain."""
        if domain == self.domain or domain in self.allow:
            return True
        if domain in self.deny:
            return False
        return self.default == "allow"

    def refusal(
        self, sender: Address, recipient: Address, *, bounce_of_own: bool = False
    ) -> str | None:
        """Why ``sender`` may not message ``recipient``, or None if it may.

        One of the two is at this relay's domain (the relay relays for nobody else). The
        reason is a sentence for the sender; it names no rule, so a refused sender learns only
        that it was refused.
        """
        other = recipient.domain if sender.domain == self.domain else sender.domain
        if not self.domain_permitted(other):
            return f"this relay does not exchange messages with {other}"
        if recipient.domain != self.domain or bounce_of_own:
            return None
        rule = self.agents.get(recipient.local)
        if rule is not None and not rule.permits(sender):
            return f"{recipient} does not accept messages from {sender}"
        return None
