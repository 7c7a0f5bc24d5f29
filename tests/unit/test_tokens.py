import pytest

from shared import tokens


@pytest.mark.parametrize("env", tokens.ENVIRONMENTS)
def test_generated_token_has_the_documented_shape(env: str) -> None:
    token = tokens.generate(env)
    assert token.startswith(f"cnx_{env}_")
    assert len(token) == len(f"cnx_{env}_") + 36
    assert tokens.parse(token).environment == env


def test_every_token_is_different() -> None:
    assert len({tokens.generate("prod") for _ in range(1000)}) == 1000


def test_one_changed_character_breaks_the_checksum() -> None:
    token = tokens.generate("prod")
    for index in range(len("cnx_prod_"), len(token)):
        replacement = "A" if token[index] != "A" else "B"
        changed = token[:index] + replacement + token[index + 1 :]
        assert not tokens.is_well_formed(changed), index


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cnx_prod_",
        "cnx_test_" + "a" * 36,
        "sk_live_" + "a" * 36,
        "cnx_prod_" + "a" * 35,
        "cnx_prod_" + "é" * 36,
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(tokens.MalformedToken) as info:
        tokens.parse(text)
    if text:
        assert text not in str(info.value)


def test_unknown_environment_cannot_be_generated() -> None:
    with pytest.raises(ValueError, match="unknown environment"):
        tokens.generate("qa")


def test_display_prefix_is_env_and_four_body_characters() -> None:
    token = tokens.generate("stg")
    assert tokens.display_prefix(token) == token[: len("cnx_stg_") + 4]


def test_digest_depends_on_pepper_and_is_not_the_token() -> None:
    token = tokens.generate("dev")
    first = tokens.digest(b"pepper-one", token)
    assert first == tokens.digest(b"pepper-one", token)
    assert first != tokens.digest(b"pepper-two", token)
    assert token not in first and len(first) == 64


def test_redact_cuts_tokens_in_text_to_their_prefix() -> None:
    token = tokens.generate("prod")
    text = f"GET /v2/instances?api_key={token} 200"
    redacted = tokens.redact(text)
    assert token not in redacted
    assert tokens.display_prefix(token) in redacted
