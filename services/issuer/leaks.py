"""Leaked secrets: how a revocation for a leak is worded, and a secret scanner's batch of reports.

A leak report names where the secret was found (a URL) and who found it (the source). Both are kept on
the KeyRevoked event (`leak_url`, `leak_source`) and in its reason, so the owner's notice says where
it leaked. Neither may carry a secret: a token inside a URL is cut to its display prefix.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import tokens

from .audit import ACTOR_GITHUB, NO_ORIGIN, Origin
from .secret_scanning import GitHubMatch, Label, TokenLabel, leak_source

if TYPE_CHECKING:
    from .service import IssuerService

log = logging.getLogger("issuer.leaks")

MAX_URL_CHARS = 500


def clean_url(url: str | None) -> str | None:
    """The URL as a notice may show it: one line, no token in it, bounded."""
    if not url:
        return None
    one_line = "".join(url.split())
    if not one_line:
        return None
    cleaned = tokens.redact(one_line)
    return cleaned if len(cleaned) <= MAX_URL_CHARS else cleaned[: MAX_URL_CHARS - 1] + "…"


def clean_source(source: str | None) -> str | None:
    if not source:
        return None
    return tokens.redact(" ".join(source.split()))[:100] or None


def reason(source: str | None, url: str | None) -> str:
    """`secret reported leaked by GitHub secret scanning (commit) at https://github.com/...`"""
    text = f"secret reported leaked by {clean_source(source) or 'a secret scanner'}"
    where = clean_url(url)
    return f"{text} at {where}" if where else text


async def report_matches(
    service: IssuerService, matches: list[GitHubMatch], origin: Origin = NO_ORIGIN
) -> list[TokenLabel]:
    """Revoke each live key a verified report names and label every distinct token: true_positive when it
    is one of our keys (live or not), false_positive otherwise. A token that is not of our format (or
    fails its checksum) is a false positive without any lookup. Each revocation is in the audit trail as
    `key.revoked_by_leak` by `github-secret-scanning`, from `origin` (GitHub's address)."""
    labels: list[TokenLabel] = []
    seen: set[str] = set()
    for match in matches:
        if match.token in seen:
            continue
        seen.add(match.token)
        key = None
        if tokens.is_well_formed(match.token):
            key = await service.report_leak(
                match.token, None, leak_source(match), match.url, actor=ACTOR_GITHUB, origin=origin
            )
            if key is not None:
                log.info("key %s (%s) reported leaked by GitHub: now %s", key.id, key.prefix, key.status)
        label: Label = "true_positive" if key is not None else "false_positive"
        labels.append(TokenLabel(token_raw=match.token, token_type=match.type, label=label))
    log.info(
        "GitHub secret scanning report: %d matches, %d of them our keys",
        len(matches),
        sum(1 for label in labels if label.label == "true_positive"),
    )
    return labels
