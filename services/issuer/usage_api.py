"""`GET /v2/keys/{id}/usage`: a key's validations per hour by outcome, from the validators' KeyUsed
reports (what the Developer Console's usage chart draws). Read-only; needs `admin:read`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from .api import ERRORS, Caller, Service, errors


class UsageHour(BaseModel):
    hour: datetime = Field(description="Start of the hour (UTC)")
    allowed: int = Field(ge=0, description="Validations that let the key through")
    refused: int = Field(
        ge=0,
        description="Validations that found the key and turned it away (scope, address, environment, "
        "rate limit, expired or revoked)",
    )


class KeyUsage(BaseModel):
    key_id: str
    hours: list[UsageHour] = Field(description="Every hour of the window, oldest first; zeros where unused")


router = APIRouter(prefix="/v2", responses=ERRORS)


@router.get("/keys/{key_id}/usage", response_model=KeyUsage, tags=["keys"], responses=errors(404, 422))
async def key_usage(
    key_id: str,
    caller: Caller,
    service: Service,
    hours: Annotated[int, Query(ge=1, le=168, description="How many hours back, this one included")] = 24,
) -> KeyUsage:
    """Validations of the key per hour over the last `hours` hours, allowed and refused, as the
    validators reported them (a few seconds behind). Needs `admin:read`."""
    rows = await service.key_usage(caller, key_id, hours)
    return KeyUsage(
        key_id=key_id,
        hours=[UsageHour(hour=hour, allowed=allowed, refused=refused) for hour, allowed, refused in rows],
    )
