"""Signed partner requests (relay/core/httpsig.py): the RFC's own vectors, then tables of
structure, profile, tampering and times. Pure: no server, no clock."""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any

import pytest

from relay.core import httpsig
from relay.core.errors import (
    BadSignature,
    DigestMismatch,
    MalformedRequest,
    SignatureRequired,
    StaleSignature,
    SynqError,
)
from relay.core.httpsig import InnerList, Item, Token
from relay.core.jws import PublicKey, SigningKey

# ------------------------------------------------------------------ RFC 9421 Appendix B.2.6

#: RFC 9421 Appendix B.1.4, "test-key-ed25519", as an RFC 8037 JWK (the PEM's raw octets).
RFC_KEY = SigningKey.from_jwk_dict(
    "test",
    {
        "kty": "OKP",
        "crv": "Ed25519",
        "d": "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU",
        "x": "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs",
    },
)
#: RFC 9421 Appendix B.2's test request.
RFC_URL = "https://example.com/foo?param=Value&Pet=dog"
RFC_HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNN"
    "yealdVLvRwEmTHWXvJwew==:",
    "Content-Length": "18",
}
RFC_SIGNATURE_INPUT = (
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@method": POST\n'
    '"@path": /foo\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"content-length": 18\n'
    '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    '"content-length");created=1618884473;keyid="test-key-ed25519"'
)
RFC_SIGNATURE = (
    "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
)


def rfc_b26_base() -> bytes:
    member = httpsig.parse_dictionary(RFC_SIGNATURE_INPUT)["sig-b26"]
    assert isinstance(member, InnerList)
    components = [str(item.value) for item in member.items]
    return httpsig.signature_base("POST", RFC_URL, RFC_HEADERS, components, member.params)


def test_rfc9421_b26_signature_base() -> None:
    assert rfc_b26_base() == RFC_BASE.encode("ascii")


def test_rfc9421_b26_signature_is_the_rfcs() -> None:
    # Ed25519 is deterministic (RFC 8032): the same key and base give the RFC's own octets.
    signature = httpsig.ed25519_sign(rfc_b26_base(), RFC_KEY)
    assert binascii.b2a_base64(signature, newline=False).decode() == RFC_SIGNATURE


def test_rfc9421_b26_verifies_with_the_rfcs_public_key() -> None:
    public = PublicKey.from_b64url("test", "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs")
    httpsig.ed25519_verify(rfc_b26_base(), binascii.a2b_base64(RFC_SIGNATURE), public)
    flipped = bytearray(binascii.a2b_base64(RFC_SIGNATURE))
    flipped[10] ^= 1
    with pytest.raises(BadSignature):
        httpsig.ed25519_verify(rfc_b26_base(), bytes(flipped), public)


def test_rfc9530_content_digest_example() -> None:
    # RFC 9530 §2 (and RFC 9421 B.2's request): SHA-256 of {"hello": "world"}.
    assert (
        httpsig.content_digest(b'{"hello": "world"}')
        == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    )


# ---------------------------------------------------------------------- structured fields

DICTIONARIES: list[tuple[str, dict[str, Any]]] = [
    ("a=1", {"a": Item(1)}),
    ("a=1, b=2", {"a": Item(1), "b": Item(2)}),
    ("a=1,b=2", {"a": Item(1), "b": Item(2)}),
    ("a=1 ,\tb=2", {"a": Item(1), "b": Item(2)}),
    ("  a=1  ", {"a": Item(1)}),
    ("a", {"a": Item(True)}),
    ("a;x=1", {"a": Item(True, (("x", 1),))}),
    ("a=?0", {"a": Item(False)}),
    ('a="x\\"y\\\\z"', {"a": Item('x"y\\z')}),
    ("a=tok/en:1", {"a": Item(Token("tok/en:1"))}),
    ("a=:AAEC:", {"a": Item(b"\x00\x01\x02")}),
    ("a=::", {"a": Item(b"")}),
    ("a=-12", {"a": Item(-12)}),
    ('a=("x" "y");p=1', {"a": InnerList((Item("x"), Item("y")), (("p", 1),))}),
    ('a=( "x"  "y" )', {"a": InnerList((Item("x"), Item("y")))}),
    ("a=()", {"a": InnerList(())}),
    ("*a.b-c_d=1", {"*a.b-c_d": Item(1)}),
]

BAD_DICTIONARIES: list[tuple[str, str]] = [
    ("a=1,", "trailing comma"),
    ("a=1,,b=2", "empty member"),
    ("a=1, a=2", "duplicate key: RFC 8941 lets the last win, a verifier must refuse"),
    ("A=1", "upper-case key"),
    ("1a=1", "key starting with a digit"),
    ("a=1.5", "decimal"),
    ("a=1234567890123456", "integer of 16 digits"),
    ("a=-", "minus without digits"),
    ('a="unterminated', "unterminated string"),
    ('a="\\n"', 'escape other than \\" and \\\\'),
    ('a="tab\there"', "control character in a string"),
    ("a=:AAE:", "byte sequence without padding"),
    ("a=:AAF=:", "byte sequence with non-zero pad bits"),
    ("a=:AA-_:", "byte sequence in base64url"),
    ("a=:AAEC", "unterminated byte sequence"),
    ("a=?2", "boolean other than ?0 ?1"),
    ('a=("x""y")', "inner-list items without a space"),
    ('a=("x"', "unterminated inner list"),
    ("a=@1618884473", "date (RFC 9651) not accepted here"),
    ('a=%"x"', "display string not accepted here"),
    ("a=1;x=1;x=2", "duplicate parameter"),
    ("a=1 b=2", "members without a comma"),
    ("a=é", "non-ASCII"),
    ("a=1, " + ", ".join(f"k{i}=1" for i in range(httpsig.MAX_MEMBERS)), "too many members"),
    ("a=(" + " ".join(["1"] * (httpsig.MAX_INNER_LIST_ITEMS + 1)) + ")", "too many items"),
    ("a=1" + "".join(f";p{i}=1" for i in range(httpsig.MAX_PARAMETERS + 1)), "too many params"),
    ("k" * (httpsig.MAX_KEY_LENGTH + 1) + "=1", "key too long"),
    ("a=" + '"' + "x" * httpsig.MAX_FIELD_BYTES + '"', "field too long"),
]


@pytest.mark.parametrize(("text", "expected"), DICTIONARIES, ids=[t for t, _ in DICTIONARIES])
def test_rfc8941_dictionary(text: str, expected: dict[str, Any]) -> None:
    assert httpsig.parse_dictionary(text) == expected


@pytest.mark.parametrize(
    ("text", "why"), BAD_DICTIONARIES, ids=[why for _, why in BAD_DICTIONARIES]
)
def test_rfc8941_dictionary_refused(text: str, why: str) -> None:
    with pytest.raises(MalformedRequest):
        httpsig.parse_dictionary(text)


def test_tokens_and_strings_stay_apart() -> None:
    parsed = httpsig.parse_dictionary('a=ed25519, b="ed25519"')
    a, b = parsed["a"], parsed["b"]
    assert isinstance(a, Item)
    assert isinstance(b, Item)
    assert isinstance(a.value, Token)
    assert not isinstance(b.value, Token)


def test_serialize_inner_list_escapes() -> None:
    text = httpsig.serialize_inner_list(["a", 'b"c'], (("k", "x\\y"), ("n", 5), ("t", True)))
    assert text == '("a" "b\\"c");k="x\\\\y";n=5;t'
    assert httpsig.parse_dictionary(f"s={text}")["s"] == InnerList(
        (Item("a"), Item('b"c')), (("k", "x\\y"), ("n", 5), ("t", True))
    )


# ------------------------------------------------------------------------- the Synq profile

KEY = SigningKey.from_jwk_dict(
    "s1",
    {
        "kty": "OKP",
        "crv": "Ed25519",
        "d": "1TMSpI7xF8gGPc1qnlZ1epw07A64DHGh0q2Kx6tv3zo",
        "x": "nK1AVE3Zugg3APzSAC0koQpnAnRDgV8XnXS8P3p88ew",
    },
)
URL = "https://relay.globex.example:8443/ard/search"
BODY = b'{"query":{"text":"translate invoices"},"federation":"none"}'
NOW = 1_772_366_400
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"


def signed(**changes: Any) -> dict[str, str]:
    kwargs: dict[str, Any] = {
        "method": "POST",
        "url": URL,
        "body": BODY,
        "key": KEY,
        "domain": "acme.example",
        "created": NOW,
        "nonce": NONCE,
    }
    kwargs.update(changes)
    return httpsig.sign_request(**kwargs)


def verify(
    headers: dict[str, str] | list[tuple[str, str]],
    *,
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    now: int = NOW,
) -> str:
    request = httpsig.parse_signed_request(method, url, headers, body)
    httpsig.verify_signature(request, KEY.public_key)
    httpsig.check_times(request, now)
    return request.domain


def test_signed_request_verifies_and_names_the_asking_domain() -> None:
    headers = signed()
    assert headers["Signature-Input"] == (
        'synq=("@method" "@authority" "@path" "content-type" "content-digest")'
        f';created={NOW};expires={NOW + 60};nonce="{NONCE}"'
        ';keyid="s1._synqkey.acme.example";alg="ed25519";tag="synq-discovery"'
    )
    assert headers["Content-Digest"] == httpsig.content_digest(BODY)
    assert verify(headers) == "acme.example"
    request = httpsig.parse_signed_request("POST", URL, headers, BODY)
    assert (request.selector, request.keyid, request.nonce) == (
        "s1",
        "s1._synqkey.acme.example",
        NONCE,
    )


def test_the_verifier_uses_its_own_url_not_the_host_header() -> None:
    # Header names in any case, a Host the proxy rewrote: @authority comes from the URL given.
    headers = {k.lower(): v for k, v in signed().items()} | {"host": "10.0.0.7:8080"}
    assert verify(headers) == "acme.example"


def test_default_ports_are_not_part_of_the_authority() -> None:
    headers = signed(url="https://relay.globex.example/ard/search")
    assert verify(headers, url="https://relay.globex.example:443/ard/search") == "acme.example"
    assert verify(headers, url="https://RELAY.globex.example/ard/search") == "acme.example"


def _replace_param(headers: dict[str, str], name: str, value: int | str) -> dict[str, str]:
    member = httpsig.parse_dictionary(headers["Signature-Input"])["synq"]
    assert isinstance(member, InnerList)
    params = tuple((k, value if k == name else v) for k, v in member.params)
    inner = httpsig.serialize_inner_list([str(i.value) for i in member.items], params)
    return {**headers, "Signature-Input": f"synq={inner}"}


def _flip_signature(headers: dict[str, str]) -> dict[str, str]:
    raw = bytearray(binascii.a2b_base64(headers["Signature"].split("=", 1)[1].strip(":")))
    raw[0] ^= 1
    return {**headers, "Signature": f"synq=:{binascii.b2a_base64(raw, newline=False).decode()}:"}


#: Each covered component changed on the way: the signature no longer verifies.
TAMPERED: list[tuple[str, Callable[[], str]]] = [
    ("@method", lambda: verify(signed(), method="PUT")),
    ("@authority: another relay", lambda: verify(signed(), url="https://relay.evil.example:8443/ard/search")),
    ("@authority: another port", lambda: verify(signed(), url="https://relay.globex.example:9443/ard/search")),
    ("@path", lambda: verify(signed(), url="https://relay.globex.example:8443/ard/explore")),
    ("content-type", lambda: verify({**signed(), "Content-Type": "text/plain"})),
    (
        "content-digest and body together",
        lambda: verify(
            {**signed(), "Content-Digest": httpsig.content_digest(b"{}")}, body=b"{}"
        ),
    ),
    ("signature octets", lambda: verify(_flip_signature(signed()))),
    ("created", lambda: verify(_replace_param(signed(), "created", NOW - 1))),
    ("expires", lambda: verify(_replace_param(signed(), "expires", NOW + 61))),
    ("nonce", lambda: verify(_replace_param(signed(), "nonce", "B" * 22))),
    ("keyid: another domain", lambda: verify(_replace_param(signed(), "keyid", "s1._synqkey.globex.example"))),
    ("component order", lambda: verify({**signed(), "Signature-Input": signed()["Signature-Input"].replace('"@method" "@authority"', '"@authority" "@method"')})),
]  # fmt: skip


@pytest.mark.parametrize(("what", "call"), TAMPERED, ids=[w for w, _ in TAMPERED])
def test_tampering_with_a_covered_component_breaks_the_signature(
    what: str, call: Callable[[], str]
) -> None:
    with pytest.raises(BadSignature):
        call()


def test_a_body_that_does_not_match_its_digest_is_refused_before_any_key() -> None:
    with pytest.raises(DigestMismatch):
        httpsig.parse_signed_request("POST", URL, signed(), BODY + b" ")
    no_digest = {k: v for k, v in signed().items() if k != "Content-Digest"}
    with pytest.raises(DigestMismatch):
        httpsig.parse_signed_request("POST", URL, no_digest, BODY)
    for value in ("sha-512=:AAAA:", "sha-256=AAAA", "sha-256=:AAAA", "sha-256=:AAAA:"):
        with pytest.raises(DigestMismatch):
            httpsig.parse_signed_request("POST", URL, {**signed(), "Content-Digest": value}, BODY)


def test_another_algorithm_beside_sha256_is_ignored() -> None:
    # RFC 9530 lets a recipient ignore algorithms it does not check; but not the covered field:
    # adding one after signing changes the covered value.
    headers = signed()
    assert verify(headers) == "acme.example"
    with pytest.raises(BadSignature):
        verify({**headers, "Content-Digest": headers["Content-Digest"] + ", sha-512=:AAAA:"})


def _input(text: str) -> dict[str, str]:
    return {**signed(), "Signature-Input": text}


_OK = (
    'synq=("@method" "@authority" "@path" "content-type" "content-digest")'
    f';created={NOW};expires={NOW + 60};nonce="{NONCE}"'
    ';keyid="s1._synqkey.acme.example";alg="ed25519";tag="synq-discovery"'
)

#: Requests that break the profile, and the error each gets (before any key is looked up).
PROFILE: list[tuple[str, Callable[[], dict[str, str] | list[tuple[str, str]]], type[SynqError]]] = [
    ("unsigned", lambda: {"Content-Type": "application/json"}, SignatureRequired),
    ("Signature without Signature-Input", lambda: {k: v for k, v in signed().items() if k != "Signature-Input"}, MalformedRequest),
    ("Signature-Input without Signature", lambda: {k: v for k, v in signed().items() if k != "Signature"}, MalformedRequest),
    ("Signature-Input not a dictionary", lambda: _input("synq=(;"), MalformedRequest),
    ("no member tagged synq-discovery", lambda: _input(_OK.replace("synq-discovery", "other")), BadSignature),
    ("tag as a token", lambda: _input(_OK.replace('"synq-discovery"', "synq-discovery")), BadSignature),
    ("two members tagged synq-discovery", lambda: _input(_OK + ", " + _OK.replace("synq=", "two=")), BadSignature),
    ("signature under another label", lambda: {**signed(), "Signature": signed()["Signature"].replace("synq=", "other=")}, BadSignature),
    ("signature not a byte sequence", lambda: {**signed(), "Signature": 'synq="abc"'}, BadSignature),
    ("alg rsa-pss-sha512", lambda: _input(_OK.replace('"ed25519"', '"rsa-pss-sha512"')), BadSignature),
    ("alg as a token", lambda: _input(_OK.replace('"ed25519"', "ed25519")), BadSignature),
    ("alg missing", lambda: _input(_OK.replace(';alg="ed25519"', "")), BadSignature),
    ("an unknown parameter", lambda: _input(_OK + ';extra="1"'), BadSignature),
    ("created missing", lambda: _input(_OK.replace(f";created={NOW}", "")), BadSignature),
    ("created as a string", lambda: _input(_OK.replace(f";created={NOW}", f';created="{NOW}"')), BadSignature),
    ("expires before created", lambda: _input(_OK.replace(f"expires={NOW + 60}", f"expires={NOW}")), BadSignature),
    ("lifetime over the maximum", lambda: _input(_OK.replace(f"expires={NOW + 60}", f"expires={NOW + httpsig.MAX_SIGNATURE_LIFETIME + 1}")), BadSignature),
    ("nonce too short", lambda: _input(_OK.replace(NONCE, "A" * 21)), BadSignature),
    ("nonce with padding", lambda: _input(_OK.replace(NONCE, "A" * 22 + "==")), BadSignature),
    ("a component missing", lambda: _input(_OK.replace(' "content-type"', "")), BadSignature),
    ("a component twice", lambda: _input(_OK.replace('"@path"', '"@path" "@path"')), BadSignature),
    ("an extra component", lambda: _input(_OK.replace('"@path"', '"@path" "date"')), BadSignature),
    ("a component with a parameter", lambda: _input(_OK.replace('"content-type"', '"content-type";sf')), BadSignature),
    ("@target-uri instead of @authority", lambda: _input(_OK.replace('"@authority"', '"@target-uri"')), BadSignature),
    ("keyid a bare selector", lambda: _input(_OK.replace("s1._synqkey.acme.example", "s1")), BadSignature),
    ("keyid in upper case", lambda: _input(_OK.replace("acme.example", "ACME.example")), BadSignature),
    ("keyid with a trailing dot", lambda: _input(_OK.replace("acme.example", "acme.example.")), BadSignature),
    ("keyid with a bad selector", lambda: _input(_OK.replace("s1._synqkey", "S_1._synqkey")), BadSignature),
    ("keyid of a single-label domain", lambda: _input(_OK.replace("acme.example", "localhost")), BadSignature),
    ("keyid with another label", lambda: _input(_OK.replace("_synqkey", "_domainkey")), BadSignature),
    ("Signature-Input too long", lambda: _input(_OK + ", x=" + '"' + "a" * httpsig.MAX_FIELD_BYTES + '"'), MalformedRequest),
]  # fmt: skip


@pytest.mark.parametrize(("what", "headers", "error"), PROFILE, ids=[w for w, *_ in PROFILE])
def test_profile(
    what: str,
    headers: Callable[[], dict[str, str] | list[tuple[str, str]]],
    error: type[SynqError],
) -> None:
    with pytest.raises(error) as caught:
        httpsig.parse_signed_request("POST", URL, headers(), BODY)
    assert type(caught.value) is error


def test_a_signature_a_proxy_added_is_ignored() -> None:
    headers = signed()
    extra = 'proxy=("@method");created=1;keyid="p";alg="ed25519"'
    both = {
        **headers,
        "Signature-Input": f"{extra}, {headers['Signature-Input']}",
        "Signature": f"proxy=:AAAA:, {headers['Signature']}",
    }
    assert verify(both) == "acme.example"


def test_field_lines_are_combined_as_one_field() -> None:
    # RFC 9110 §5.3: two Signature-Input lines are one list; aiohttp hands both over.
    headers = signed()
    extra = 'proxy=("@method");created=1;keyid="p";alg="ed25519"'
    lines = [(k, v) for k, v in headers.items()] + [
        ("Signature-Input", extra),
        ("Signature", "proxy=:AAAA:"),
    ]
    assert verify(lines) == "acme.example"
    # The same label on two lines is a duplicate key, which a verifier refuses.
    twice = [*headers.items(), ("Signature", headers["Signature"])]
    with pytest.raises(MalformedRequest):
        verify(twice)


#: (created offset from now, expires offset from now, outcome) around the skew limits.
TIMES: list[tuple[int, int, type[SynqError] | None]] = [
    (0, 60, None),
    (httpsig.MAX_SIGNATURE_SKEW, httpsig.MAX_SIGNATURE_SKEW + 60, None),
    (httpsig.MAX_SIGNATURE_SKEW + 1, httpsig.MAX_SIGNATURE_SKEW + 61, StaleSignature),
    (-60 - httpsig.MAX_SIGNATURE_SKEW + 1, -httpsig.MAX_SIGNATURE_SKEW + 1, None),
    (-60 - httpsig.MAX_SIGNATURE_SKEW, -httpsig.MAX_SIGNATURE_SKEW, StaleSignature),
    (-3600, -3540, StaleSignature),
]


@pytest.mark.parametrize(("created", "expires", "error"), TIMES)
def test_times(created: int, expires: int, error: type[SynqError] | None) -> None:
    headers = signed(created=NOW + created, lifetime=expires - created)
    if error is None:
        assert verify(headers) == "acme.example"
    else:
        with pytest.raises(error):
            verify(headers)


def test_times_are_judged_only_after_the_signature() -> None:
    # A forged, stale request learns nothing about the window: its signature fails first.
    headers = _flip_signature(signed(created=NOW - 3600))
    request = httpsig.parse_signed_request("POST", URL, headers, BODY)
    with pytest.raises(BadSignature):
        httpsig.verify_signature(request, KEY.public_key)


def test_a_key_under_another_selector_does_not_verify() -> None:
    request = httpsig.parse_signed_request("POST", URL, signed(), BODY)
    other = SigningKey.generate("s2")
    with pytest.raises(BadSignature):
        httpsig.verify_signature(request, other.public_key)
    impostor = PublicKey.from_raw("s1", other.public_key.raw)
    with pytest.raises(BadSignature):
        httpsig.verify_signature(request, impostor)


@pytest.mark.parametrize(
    ("keyid", "expected"),
    [
        ("s1._synqkey.acme.example", ("s1", "acme.example")),
        ("s20261125-2._synqkey.xn--bcher-kva.example", ("s20261125-2", "xn--bcher-kva.example")),
    ],
)
def test_parse_keyid(keyid: str, expected: tuple[str, str]) -> None:
    assert httpsig.parse_keyid(keyid) == expected
    assert httpsig.keyid_for(*expected) == keyid


def test_signer_refuses_what_a_verifier_would() -> None:
    with pytest.raises(ValueError, match="nonce"):
        signed(nonce="short")
    with pytest.raises(ValueError, match="lifetime"):
        signed(lifetime=httpsig.MAX_SIGNATURE_LIFETIME + 1)
