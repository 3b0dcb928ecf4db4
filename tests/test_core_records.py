"""DNS TXT records: relay location and published keys (SPEC.md §4.3)."""

from __future__ import annotations

import pytest

from relay.core import records
from relay.core.errors import ConfigError
from relay.core.jws import PublicKey
from relay.core.records import KeyRecord, RecordError, RelayRecord

# RFC 8037 Appendix A.1 public key.
X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
KEY = PublicKey.from_b64url("s1", X)


def test_record_names() -> None:
    assert records.relay_record_name("alpha.example") == "_synq.alpha.example"
    assert records.key_record_name("s1", "alpha.example") == "s1._synqkey.alpha.example"


def test_key_record_round_trip() -> None:
    txt = KeyRecord(KEY).to_txt()
    assert txt == f"v=synq1; k=ed25519; p={X}"
    assert KeyRecord.parse("s1", txt) == KeyRecord(KEY)


def test_relay_record_round_trip() -> None:
    rec = RelayRecord("https://relay.alpha.example:8443")
    assert rec.to_txt() == "v=synq1; relay=https://relay.alpha.example:8443"
    assert RelayRecord.parse(rec.to_txt()) == rec


KEY_ACCEPTED = [
    pytest.param(f"v=synq1; k=ed25519; p={X}", id="canonical"),
    pytest.param(f"v=synq1;k=ed25519;p={X}", id="no-spaces"),
    pytest.param(f"  v = synq1 ;\tk=ed25519 ;  p={X} ;", id="whitespace-and-trailing-semicolon"),
    pytest.param(f"v=synq1; p={X}", id="k-defaults-to-ed25519"),
    pytest.param(f"v=synq1; p={X}; k=ed25519", id="tags-after-v-in-any-order"),
    pytest.param(f"\tv\t=\tsynq1\r\n;p={X}", id="sp-htab-cr-lf-around-tags"),
    pytest.param(f"v=synq1; k=ed25519; p={X}; t=s; n=rotated 2026", id="unknown-tags-ignored"),
    pytest.param(f"v=synq1; k=ed25519; p={X}; future=", id="unknown-empty-tag-ignored"),
]


@pytest.mark.parametrize("txt", KEY_ACCEPTED)
def test_key_record_accepts(txt: str) -> None:
    assert KeyRecord.parse("s1", txt).key == KEY


KEY_REFUSED = [
    pytest.param(f"k=ed25519; p={X}", id="missing-v"),
    pytest.param(f"p={X}; v=synq1", id="v-not-first"),
    pytest.param(f"v=synq1 ed25519; p={X}", id="v-value-not-synq1"),
    pytest.param(f"\u00a0v=synq1; p={X}", id="non-ascii-space-before-v"),
    pytest.param(f"v=synq2; k=ed25519; p={X}", id="other-version"),
    pytest.param(f"v=DKIM1; k=ed25519; p={X}", id="dkim-record"),
    pytest.param(f"v=synq1; v=synq1; k=ed25519; p={X}", id="duplicate-v"),
    pytest.param(f"v=synq1; k=ed25519; p={X}; p={X}", id="duplicate-p"),
    pytest.param(f"v=synq1; k=rsa; p={X}", id="other-key-type"),
    pytest.param("v=synq1; k=ed25519", id="missing-p"),
    pytest.param("v=synq1; k=ed25519; p=", id="empty-p-revoked"),
    pytest.param("v=synq1; k=ed25519; p=AAAA", id="p-too-short"),
    pytest.param(f"v=synq1; k=ed25519; p={X}AAAA", id="p-too-long"),
    pytest.param(f"v=synq1; k=ed25519; p={X}=", id="p-padded"),
    pytest.param(
        "v=synq1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo", id="p-std-b64"
    ),
    pytest.param(f"v=synq1; k=ed25519; p={X[:-1]}p", id="p-non-canonical-bits"),
    pytest.param(
        "v=synq1; k=ed25519; p=11qYAYKx CrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", id="p-space"
    ),
    pytest.param(f"v=synq1; k ed25519; p={X}", id="tag-without-equals"),
    pytest.param(f"v=synq1; =ed25519; p={X}", id="empty-tag-name"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("txt", KEY_REFUSED)
def test_key_record_refuses(txt: str) -> None:
    with pytest.raises(RecordError):
        KeyRecord.parse("s1", txt)


@pytest.mark.parametrize("selector", ["S1", "", "s1.s2", "-s1", "s1\n"])
def test_key_record_refuses_bad_selector(selector: str) -> None:
    with pytest.raises(ConfigError):
        KeyRecord.parse(selector, f"v=synq1; k=ed25519; p={X}")


def test_key_record_keeps_selector() -> None:
    assert KeyRecord.parse("rot-2026", f"v=synq1; p={X}").key.selector == "rot-2026"


RELAY_CASES = [
    pytest.param("v=synq1; relay=https://r.example", "https://r.example", id="https"),
    pytest.param("v=synq1; relay=https://r.example/", "https://r.example", id="trailing-slash"),
    pytest.param("v=synq1; relay=http://127.0.0.1:8443", "http://127.0.0.1:8443", id="http-port"),
    pytest.param("v=synq1; x=1; relay=https://r.example", "https://r.example", id="unknown-tag"),
]


@pytest.mark.parametrize(("txt", "url"), RELAY_CASES)
def test_relay_record_accepts(txt: str, url: str) -> None:
    assert RelayRecord.parse(txt).relay_url == url


@pytest.mark.parametrize(
    "txt",
    [
        pytest.param("relay=https://r.example", id="missing-v"),
        pytest.param("relay=https://r.example; v=synq1", id="v-not-first"),
        pytest.param("v=synq1; relay=https://[::1", id="unclosed-ipv6-literal"),
        pytest.param("v=synq1", id="missing-relay"),
        pytest.param("v=synq1; relay=ftp://r.example", id="not-http"),
        pytest.param("v=synq1; relay=r.example", id="no-scheme"),
        pytest.param("v=synq1; relay=https://", id="no-host"),
        pytest.param("v=synq1; relay=https://a; relay=https://b", id="duplicate-relay"),
    ],
)
def test_relay_record_refuses(txt: str) -> None:
    with pytest.raises(RecordError):
        RelayRecord.parse(txt)


def test_parse_tags() -> None:
    assert records.parse_tags(" a=1 ;b = two words ;; c=") == {"a": "1", "b": "two words", "c": ""}
    with pytest.raises(RecordError, match="duplicate"):
        records.parse_tags("a=1; a=2")


@pytest.mark.parametrize(
    ("txt", "synq"),
    [
        pytest.param("v=synq1; k=ed25519; p=", True, id="revoked-key-is-still-a-synq-record"),
        pytest.param("v=synq1", True, id="bare-version"),
        pytest.param(" v = synq1 ;garbage", True, id="malformed-but-synq"),
        pytest.param("v=synq2; p=x", False, id="other-version"),
        pytest.param("v=spf1 -all", False, id="spf"),
        pytest.param("v=DKIM1; k=ed25519; p=x", False, id="dkim"),
        pytest.param("google-site-verification=abc", False, id="site-verification"),
        pytest.param("p=x; v=synq1", False, id="v-not-first"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_synq_record(txt: str, synq: bool) -> None:
    # Which TXT records at a name are ours (SPEC.md §4.3): the rest belong to other protocols.
    assert records.is_synq_record(txt) is synq
