"""The audit trail's pure rules: what an entry may hold of a client's text, and the bound on denials."""

from __future__ import annotations

from services.issuer.audit import DenialGate, Origin, clean_ip, clean_user_agent, scrub
from shared import tokens


def test_scrub_keeps_no_secret_no_email_and_no_control_characters() -> None:
    key = tokens.generate("prod")
    text = f"a\r\nb\x1b[2J\u202ec\u200b {key} {key[:15]} whsec_QUJDRA== Bearer abc.def me@example.com"
    cleaned = scrub(text, 1000)
    assert cleaned == "ab[2Jc cnx_prod_… cnx_prod_… whsec_… Bearer … …@…"
    assert len(scrub("x" * 1000, 256)) == 256
    # Unicode line and paragraph separators end a line as CR/LF do; word joiners and the BOM hide text.
    assert scrub("a\u2028b\u2029c\u2060d\ufeffe\u2066f", 100) == "abcdef"


def test_user_agent_and_address() -> None:
    assert clean_user_agent(None) is None and clean_user_agent("\x00\x01") is None
    assert clean_user_agent("curl/8.5.0") == "curl/8.5.0"
    assert clean_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert clean_ip("2001:DB8::0:1") == "2001:db8::1"
    hop = clean_ip("not-an-address\n" + "y" * 100)
    assert hop is not None and hop.startswith("not-an-address") and len(hop) == 64
    origin = Origin.of("127.0.0.1", "ua\x7f", "GET", "/v2/audit")
    assert origin == Origin("127.0.0.1", "ua", "GET", "/v2/audit")


def test_denials_are_bounded_per_key_and_counted() -> None:
    gate = DenialGate(per_minute=2)
    assert [gate.admit("key_a", 0.0) for _ in range(5)] == [0, 0, None, None, None]
    # Unknown keys share one bucket of their own; another key has its own.
    assert [gate.admit(None, 0.0) for _ in range(3)] == [0, 0, None]
    assert gate.admit("key_b", 0.0) == 0
    # A token back after half a minute: the entry says how many were left out meanwhile.
    assert gate.admit("key_a", 30.0) == 3
    assert gate.admit("key_a", 30.0) is None
    assert gate.admit(None, 60.0) == 1
    assert DenialGate(per_minute=0).admit("key_a", 0.0) is None
