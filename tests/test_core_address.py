"""Address parsing and normalisation (SPEC.md §2)."""

from __future__ import annotations

import pytest

from relay.core.address import (
    MAILER_DAEMON,
    POSTMASTER,
    RESERVED_LOCALS,
    Address,
    normalize_address,
    normalize_domain,
    normalize_local,
)
from relay.core.errors import InvalidAddress

VALID = [
    pytest.param("alice@example.com", "alice@example.com", id="plain"),
    pytest.param("Alice@Example.COM", "alice@example.com", id="case-folded"),
    pytest.param("alice@example.com.", "alice@example.com", id="trailing-dot-dropped"),
    pytest.param("a@b.example", "a@b.example", id="one-char-local"),
    pytest.param("a.b_c-d9@x.example", "a.b_c-d9@x.example", id="local-punctuation"),
    pytest.param("0agent@x.example", "0agent@x.example", id="local-starts-with-digit"),
    pytest.param("x" * 64 + "@x.example", "x" * 64 + "@x.example", id="local-64-chars"),
    pytest.param("bot@bücher.example", "bot@xn--bcher-kva.example", id="idna-u-label"),
    pytest.param("bot@BÜCHER.Example", "bot@xn--bcher-kva.example", id="idna-uts46-case-mapping"),
    pytest.param("bot@faß.de", "bot@xn--fa-hia.de", id="idna-2008-nontransitional-sharp-s"),
    pytest.param("bot@xn--bcher-kva.example", "bot@xn--bcher-kva.example", id="a-label-kept"),
    pytest.param("bot@例え.テスト", "bot@xn--r8jz45g.xn--zckzah", id="idna-cjk"),
    pytest.param("bot@a-b.c-d.example", "bot@a-b.c-d.example", id="hyphens-inside-labels"),
    pytest.param("bot@\uff25\uff38.example", "bot@ex.example", id="uts46-fullwidth-mapped"),
    pytest.param("bot@ex\u00adample.com", "bot@example.com", id="uts46-soft-hyphen-removed"),
    pytest.param("bot@XN--BCHER-KVA.example", "bot@xn--bcher-kva.example", id="a-label-upper"),
    pytest.param("bot@1.2.3.example", "bot@1.2.3.example", id="numeric-labels-not-last"),
    pytest.param("postmaster@example.com", "postmaster@example.com", id="reserved-postmaster"),
]


@pytest.mark.parametrize(("text", "canonical"), VALID)
def test_normalises(text: str, canonical: str) -> None:
    assert normalize_address(text) == canonical
    addr = Address.parse(text)
    assert str(addr) == canonical
    # Normalisation is idempotent: the canonical form parses to itself.
    assert normalize_address(canonical) == canonical


INVALID = [
    pytest.param("alice.example.com", id="no-at"),
    pytest.param("alice@bob@example.com", id="two-at"),
    pytest.param("@example.com", id="empty-local"),
    pytest.param("alice@", id="empty-domain"),
    pytest.param("", id="empty"),
    pytest.param("al ice@example.com", id="space-in-local"),
    pytest.param("al+ice@example.com", id="plus-in-local"),
    pytest.param("alice!@example.com", id="bang-in-local"),
    pytest.param(".alice@example.com", id="local-starts-with-dot"),
    pytest.param("-alice@example.com", id="local-starts-with-hyphen"),
    pytest.param("_alice@example.com", id="local-starts-with-underscore"),
    pytest.param("x" * 65 + "@example.com", id="local-65-chars"),
    pytest.param("älice@example.com", id="non-ascii-local"),
    pytest.param("\u212aelvin@example.com", id="kelvin-sign-not-folded-to-k"),
    pytest.param("\u017fam@example.com", id="long-s-not-folded-to-s"),
    pytest.param("alice\n@example.com", id="local-trailing-newline"),
    pytest.param('"alice"@example.com', id="quoted-local"),
    pytest.param("alice@example.com\n", id="domain-trailing-newline"),
    pytest.param("alice@localhost", id="single-label"),
    pytest.param("alice@com.", id="single-label-trailing-dot"),
    pytest.param("alice@192.0.2.1", id="ipv4-literal"),
    pytest.param("alice@[192.0.2.1]", id="bracketed-ipv4-literal"),
    pytest.param("alice@[IPv6:2001:db8::1]", id="ipv6-literal"),
    pytest.param("alice@example.123", id="numeric-tld"),
    pytest.param("alice@exa mple.com", id="space-in-domain"),
    pytest.param("alice@exa_mple.com", id="underscore-in-domain"),
    pytest.param("alice@-example.com", id="label-leading-hyphen"),
    pytest.param("alice@example-.com", id="label-trailing-hyphen"),
    pytest.param("alice@example..com", id="empty-label"),
    pytest.param("alice@example.com..", id="two-trailing-dots"),
    pytest.param("alice@.example.com", id="leading-dot"),
    pytest.param("alice@" + "a" * 64 + ".example", id="label-64-chars"),
    pytest.param("alice@" + ".".join(["a" * 63] * 4) + ".example", id="domain-too-long"),
    pytest.param("alice@" + "é" * 300 + ".example", id="u-label-domain-too-long"),
    pytest.param("alice@exam\u200dple.com", id="zero-width-joiner"),
    pytest.param("alice@xn--.example", id="bad-a-label"),
    pytest.param("alice@xn--abc.example", id="a-label-not-punycode-of-a-valid-u-label"),
    pytest.param("alice@xn--ls8h.example", id="a-label-of-an-emoji"),
    pytest.param("alice@ab--cd.example", id="hyphens-in-third-and-fourth-position"),
    pytest.param("alice@\U0001f600.example", id="emoji-u-label"),
]


@pytest.mark.parametrize("text", INVALID)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidAddress):
        Address.parse(text)


@pytest.mark.parametrize("value", [None, 42, b"alice@example.com", ["alice@example.com"]])
def test_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidAddress):
        Address.parse(value)


def test_domain_at_length_limit() -> None:
    # 253 characters in A-label form is the RFC 1035 maximum; one more is refused.
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 58, "ex"]
    name = ".".join(labels)
    assert len(name) == 253
    assert normalize_domain(name) == name
    with pytest.raises(InvalidAddress):
        normalize_domain("e" + name)


def test_local_and_domain_helpers() -> None:
    assert normalize_local("MiXeD.Case") == "mixed.case"
    assert normalize_domain("Example.COM.") == "example.com"


def test_equal_spellings_compare_and_hash_equal() -> None:
    a = Address.parse("Bot@BÜCHER.example")
    b = Address.parse("bot@xn--bcher-kva.example.")
    assert a == b
    assert hash(a) == hash(b)
    assert a.local == "bot"
    assert a.domain == "xn--bcher-kva.example"


def test_reserved_locals() -> None:
    assert POSTMASTER == "postmaster"
    assert MAILER_DAEMON == "mailer-daemon"
    assert frozenset({"postmaster", "mailer-daemon"}) == RESERVED_LOCALS
    # Reserved locals are addresses like any other: reservation is a registration rule.
    assert normalize_address("MAILER-DAEMON@example.com") == "mailer-daemon@example.com"
