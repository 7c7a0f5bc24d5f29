"""The command contract: `keys.cmd.*` requests to the issuer and its replies, with their subjects.

Request-reply over core NATS, in the issuer's `issuer` queue group. Both ends validate: the issuer
answers a body that does not fit its command with a `CommandError` (`bad_request`) rather than no answer
at all, and a requester reads every answer through `parse_key_reply` / `parse_secrets_reply`, so a
malformed reply is an error there, never a half-read dict. As for events, a field added within the
contract is optional, so older and newer services keep understanding each other.

Who sends what: the rotator `end_grace`, `expire`, `renew` and `status` (shared/natsidentities.py lists
exactly these for it); the notifier `webhook_secret`; an operator's tool `revoke`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.events import KeyStatus

CMD_PREFIX = "keys.cmd"
# The context the issuer seals a webhook signing secret under for its trip to the notifier.
WEBHOOK_SECRET_CONTEXT = "webhook-secret"

# Bounds of what a command may carry: ids are the issuer's own (`key_` and 24 characters, account ids
# up to the catalog's 64), a reason goes into the event and the audit trail.
MAX_ID = 64
MAX_REASON = 1000

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]


class Command(BaseModel):
    """A request to the issuer; `subject` is where it goes."""

    model_config = ConfigDict(frozen=True)

    subject: ClassVar[str]

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class KeyCommand(Command):
    key_id: Id


class RevokeKey(KeyCommand):
    """Revoke the key whatever its state (an operator's tool); revoking twice changes nothing."""

    subject: ClassVar[str] = f"{CMD_PREFIX}.revoke"
    reason: str | None = Field(default=None, max_length=MAX_REASON)


class EndGrace(KeyCommand):
    """A rotation's grace period is over: revoke the old key if it is still rotating."""

    subject: ClassVar[str] = f"{CMD_PREFIX}.end_grace"


class ExpireKey(KeyCommand):
    """The key's expiry is due: record it unless the key was renewed meanwhile."""

    subject: ClassVar[str] = f"{CMD_PREFIX}.expire"


class RenewKey(KeyCommand):
    """Auto-renew: extend an active key by `extend_days` (default: its own lifetime)."""

    subject: ClassVar[str] = f"{CMD_PREFIX}.renew"
    extend_days: int | None = Field(default=None, ge=1, le=365)


class KeyStatusQuery(KeyCommand):
    """The key's status now, from the system of record."""

    subject: ClassVar[str] = f"{CMD_PREFIX}.status"


class WebhookSecretsQuery(Command):
    """The account's webhook signing secrets (made now if it has none), sealed for transport."""

    subject: ClassVar[str] = f"{CMD_PREFIX}.webhook_secret"
    account_id: Id


KEY_COMMANDS: tuple[type[KeyCommand], ...] = (RevokeKey, EndGrace, ExpireKey, RenewKey, KeyStatusQuery)
ROTATOR_COMMANDS: tuple[type[KeyCommand], ...] = (EndGrace, ExpireKey, RenewKey, KeyStatusQuery)


class Reply(BaseModel):
    model_config = ConfigDict(frozen=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class KeyAnswer(Reply):
    """The key as it is after the command."""

    ok: Literal[True] = True
    key_id: str
    status: KeyStatus
    revision: int = Field(ge=1)
    expires_at: datetime | None = None


class WebhookSecrets(Reply):
    """`sealed`: the current secret; `previous`: those still in their overlap; each sealed under
    `WEBHOOK_SECRET_CONTEXT` with the shared field-encryption keys."""

    ok: Literal[True] = True
    sealed: str = Field(min_length=1)
    previous: list[str] = Field(default_factory=list)


class CommandError(Reply):
    """A command not carried out: `not_found` (no such key: nothing will change that, no retry) or
    `bad_request` (the body does not fit the command; `detail` says where, never echoing the body)."""

    ok: Literal[False] = False
    error: Literal["not_found", "bad_request"]
    detail: str | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


NOT_FOUND = CommandError(error="not_found")

_KEY_REPLY: TypeAdapter[KeyAnswer | CommandError] = TypeAdapter(KeyAnswer | CommandError)
_SECRETS_REPLY: TypeAdapter[WebhookSecrets | CommandError] = TypeAdapter(WebhookSecrets | CommandError)


def parse_key_reply(raw: bytes | str) -> KeyAnswer | CommandError:
    """A reply to a key command. Raises pydantic.ValidationError (a ValueError) when it is neither."""
    return _KEY_REPLY.validate_json(raw)


def parse_secrets_reply(raw: bytes | str) -> WebhookSecrets | CommandError:
    return _SECRETS_REPLY.validate_json(raw)


def bad_request(exc: ValidationError) -> CommandError:
    """The refusal of a body that did not validate: each field's location and problem, without the
    input (pydantic's message would quote it, and a hostile body may carry anything)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
    return CommandError(error="bad_request", detail=problems[:500])
