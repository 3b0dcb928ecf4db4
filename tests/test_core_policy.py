"""Partner policy arithmetic (relay.core.policy), as tables."""

from __future__ import annotations

import pytest

from relay.core.address import Address
from relay.core.errors import InvalidAddress
from relay.core.policy import AgentRule, Pattern, Policy

OWN = "acme.test"


def a(text: str) -> Address:
    return Address.parse(text)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("*", "any", "*"),
        (" * ", "any", "*"),
        ("Globex.TEST", "domain", "globex.test"),
        ("globex.test.", "domain", "globex.test"),
        ("Bob@Globex.Test", "address", "bob@globex.test"),
        ("bot@Bücher.example", "address", "bot@xn--bcher-kva.example"),
    ],
)
def test_pattern_parse_normalises(text: str, kind: str, value: str) -> None:
    pattern = Pattern.parse(text)
    assert (pattern.kind, pattern.value) == (kind, value)


@pytest.mark.parametrize("text", ["", "localhost", "a@b@c.test", "**", "*.globex.test", "@x.test"])
def test_pattern_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidAddress):
        Pattern.parse(text)


# (allow, deny, sender, permitted)
AGENT_RULES = [
    ((), (), "x@evil.test", True),  # no rules: anyone the domain gate lets in
    (("*",), (), "x@evil.test", True),
    (("globex.test",), (), "bob@globex.test", True),
    (("globex.test",), (), "x@evil.test", False),  # an allow list closes the door to the rest
    (("carol@globex.test",), (), "bob@globex.test", False),
    (("carol@globex.test",), (), "carol@globex.test", True),
    ((), ("evil.test",), "x@evil.test", False),
    ((), ("evil.test",), "bob@globex.test", True),  # a deny list alone leaves the rest open
    (("*",), ("evil.test",), "x@evil.test", False),  # domain beats *
    (("evil.test",), ("*",), "x@evil.test", True),  # domain beats *
    (("evil.test",), ("*",), "bob@globex.test", False),
    (("ok@evil.test",), ("evil.test",), "ok@evil.test", True),  # address beats domain
    (("ok@evil.test",), ("evil.test",), "x@evil.test", False),
    (("evil.test",), ("bad@evil.test",), "bad@evil.test", False),
    (("evil.test",), ("bad@evil.test",), "fine@evil.test", True),
    (("alice@acme.test",), (), "alice@acme.test", True),  # a colleague
    (("alice@acme.test",), (), "mallory@acme.test", False),
]


@pytest.mark.parametrize(("allow", "deny", "sender", "permitted"), AGENT_RULES)
def test_agent_rule(
    allow: tuple[str, ...], deny: tuple[str, ...], sender: str, permitted: bool
) -> None:
    assert AgentRule.parse(allow, deny).permits(a(sender)) is permitted


def test_pattern_in_both_lists_is_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        AgentRule.parse(["Globex.test"], ["globex.test"])


# (default, allow, deny, domain, permitted)
DOMAIN_GATE = [
    ("allow", (), (), "globex.test", True),
    ("allow", (), ("evil.test",), "evil.test", False),
    ("allow", (), ("evil.test",), "globex.test", True),
    ("deny", (), (), "globex.test", False),
    ("deny", ("globex.test",), (), "globex.test", True),
    ("deny", ("globex.test",), (), "initech.test", False),
    ("deny", (), (), OWN, True),  # the relay's own domain always passes
    ("allow", (), ("evil.test",), "sub.evil.test", True),  # exact domains, no suffix match
]


@pytest.mark.parametrize(("default", "allow", "deny", "domain", "permitted"), DOMAIN_GATE)
def test_domain_gate(
    default: str, allow: tuple[str, ...], deny: tuple[str, ...], domain: str, permitted: bool
) -> None:
    policy = Policy.build(OWN, default=default, allow=allow, deny=deny)  # type: ignore[arg-type]
    assert policy.domain_permitted(domain) is permitted


POLICY = Policy.build(
    OWN,
    default="deny",
    allow=["globex.test", "initech.test"],
    deny=["evil.test"],
    agents={
        "bob": (["alice@acme.test", "globex.test"], []),
        "carol": (["*"], ["initech.test"]),
        "dave": ([], ["*"]),
    },
)

# (sender, recipient, bounce_of_own, refused?)
REFUSALS = [
    ("x@globex.test", "alice@acme.test", False, False),  # alice has no rules
    ("x@unknown.test", "alice@acme.test", False, True),  # default deny
    ("x@evil.test", "alice@acme.test", False, True),
    ("alice@acme.test", "x@globex.test", False, False),  # outbound to an allowed domain
    ("alice@acme.test", "x@evil.test", False, True),  # the gate works both ways
    ("alice@acme.test", "x@unknown.test", False, True),
    ("alice@acme.test", "bob@acme.test", False, False),
    ("mallory@acme.test", "bob@acme.test", False, True),
    ("x@globex.test", "bob@acme.test", False, False),
    ("x@initech.test", "bob@acme.test", False, True),
    ("x@initech.test", "carol@acme.test", False, True),
    ("x@globex.test", "carol@acme.test", False, False),
    ("x@globex.test", "dave@acme.test", False, True),
    ("alice@acme.test", "dave@acme.test", False, True),
    # A bounce of the recipient's own message passes its agent rules, never the domain gate.
    ("mailer-daemon@initech.test", "bob@acme.test", True, False),
    ("mailer-daemon@globex.test", "dave@acme.test", True, False),
    ("mailer-daemon@evil.test", "alice@acme.test", True, True),
    ("mailer-daemon@unknown.test", "dave@acme.test", True, True),
]


@pytest.mark.parametrize(("sender", "recipient", "bounce", "refused"), REFUSALS)
def test_refusal(sender: str, recipient: str, bounce: bool, refused: bool) -> None:
    why = POLICY.refusal(a(sender), a(recipient), bounce_of_own=bounce)
    assert (why is not None) is refused
    if why is not None:
        # The sentence names the parties, never the rule that matched.
        assert "deny" not in why
        assert "*" not in why


def test_open_policy_refuses_nobody() -> None:
    policy = Policy.open(OWN)
    assert policy.refusal(a("x@anything.test"), a("bob@acme.test")) is None
    assert policy.refusal(a("bob@acme.test"), a("x@anything.test")) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allow": ["globex.test"], "deny": ["GLOBEX.test"]}, "both allowed and denied"),
        ({"deny": ["acme.test"]}, "own domain"),
        ({"agents": {"Bob": ([], []), "bob": ([], [])}}, "two rule sets"),
    ],
)
def test_incoherent_policy_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.build(OWN, **kwargs)  # type: ignore[arg-type]


def test_bad_entries_are_refused() -> None:
    with pytest.raises(InvalidAddress):
        Policy.build(OWN, allow=["not a domain"])
    with pytest.raises(InvalidAddress):
        Policy.build(OWN, agents={"Bad Name": (["*"], [])})
