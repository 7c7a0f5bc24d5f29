"""Hypothesis strategies for request bodies: strings near every bound of the management API, hostile
characters included, so a property sees where what is sent and what is stored part."""

from __future__ import annotations

from hypothesis import strategies as st

from services.issuer.schemas import MAX_URL_LENGTH

# Any text (controls and bidi overrides included), and text the API takes (the most of the cases, so
# that what is accepted is exercised as much as what is refused).
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
fair_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cf"]), max_size=60)
hosts = st.sampled_from(["hooks.example.com", "Bücher.example", "93.184.215.14", "[2606:2800:220:1::1]"])


def _url(scheme: str, host: str, path: str, length: int | None) -> str:
    """A URL of `length` characters as sent (padded in its query), or as it comes."""
    url = f"{scheme}://{host}{path}"
    return url if length is None else url + "?" + "q" * max(length - len(url) - 1, 0)


urls = st.builds(
    _url,
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    # No path half of the time: that is when normalisation adds a `/`.
    st.one_of(st.just(""), st.text(st.characters(codec="ascii"), max_size=30).map(lambda p: "/" + p)),
    # Around the bound most of the time: that is where what is sent and what is stored part.
    st.one_of(st.none(), st.sampled_from([MAX_URL_LENGTH - 1, MAX_URL_LENGTH, MAX_URL_LENGTH + 1])),
)
emails = st.one_of(st.emails(), st.emails().map(str.upper), text)
notify = st.fixed_dictionaries({}, optional={"email": emails, "webhook_url": st.one_of(urls, text)})
create_bodies = st.fixed_dictionaries(
    {
        "name": st.one_of(
            fair_text.filter(bool),
            fair_text.map(lambda t: (t + "n" * 200)[:200]),
            text,
            st.text(max_size=205),
        ),
        "environment": st.just("prod"),
        "scopes": st.just(["compute:read"]),
        "notify": notify,
    },
    optional={
        "metadata": st.dictionaries(fair_text.map(lambda t: t[:41]), st.text(max_size=501), max_size=3),
    },
)
