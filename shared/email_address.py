"""The one rule for a notification address, used where it is accepted (the issuer's API) and where it
is used (the notifier, which may read rows stored under older rules). Pure: no DNS, no network."""

from __future__ import annotations

from typing import Final

from email_validator import EmailNotValidError, validate_email

from shared.text import has_unsafe

# RFC 5321's limit on a path (what RCPT TO carries), checked on the address as it is stored.
MAX_LENGTH: Final = 254


class InvalidEmail(ValueError):
    """Not an address mail can be sent to. The message never quotes the input."""


def normalise(value: str) -> str:
    """The address as email-validator normalises it (domain lower-cased and IDNA-encoded).

    Syntax only: deliverability (a DNS query) is off, so validation never touches the network and a
    domain whose mail is set up later is accepted; a mailbox that does not exist shows as a permanent
    failure in the notifier's delivery log. ASCII only (no SMTPUTF8): any relay can carry the address
    and it is safe in a header. Quoted local parts, domain literals and display names are refused, so
    the result is a bare `local@domain`, never a second header or recipient. email-validator's own
    messages quote the offending characters; ours do not echo the input.
    """
    if has_unsafe(value):
        raise InvalidEmail("must not contain control characters or bidirectional overrides")
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False, strict=True)
    except EmailNotValidError:
        raise InvalidEmail("not a valid email address") from None
    address = checked.ascii_email or checked.normalized
    if len(address) > MAX_LENGTH:
        raise InvalidEmail(f"not a valid email address: over {MAX_LENGTH} characters")
    return address
