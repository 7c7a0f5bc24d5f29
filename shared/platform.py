"""Events other platform services publish and CloudNexus Keys reacts to, and where they travel.

They are captured by the PLATFORM_EVENTS stream (publishers may use plain NATS publish), so an
issuer that is down when one is published still gets it. A payload that does not validate goes to
`keys.dlq.<subject>` with the reason, never blocking the consumer; a leaked token never appears there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

STREAM_PLATFORM = "PLATFORM_EVENTS"
SUBJECT_ACCOUNT_DELETED = "platform.accounts.deleted"
SUBJECT_ACCOUNT_SUSPENDED = "platform.accounts.suspended"
SUBJECT_ACCOUNT_RESUMED = "platform.accounts.resumed"
SUBJECT_SECRET_LEAKED = "platform.secrets.leaked"
# plans.changed is left out on purpose: validators answer it as a request, and a stream on the
# subject would answer the requester first with its own PubAck.
PLATFORM_SUBJECTS = ("platform.accounts.>", "platform.secrets.>")


class PlatformEvent(BaseModel):
    # Other teams add fields over time; unknown ones are ignored, missing required ones are refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str | None = Field(default=None, max_length=100)


class AccountEvent(PlatformEvent):
    """`platform.accounts.deleted|suspended|resumed`: `{account_id, event_id?, reason?}`."""

    account_id: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=200)


class SecretLeaked(PlatformEvent):
    """`platform.secrets.leaked`: `{token | digest, source?, url?}` from a secret scanner."""

    token: str | None = Field(default=None, max_length=100)
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    source: str | None = Field(default=None, max_length=100)
    url: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _one_of(self) -> SecretLeaked:
        if not self.token and not self.digest:
            raise ValueError("a leak report needs the token or its digest")
        return self
