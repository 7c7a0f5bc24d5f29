"""The typed results of the management client: the API's own response models.

The client ships in the same distribution as the issuer, so it takes the models the API serialises
(services/issuer/schemas.py, shared/validation.py) rather than copies that could drift from them. Those
response models ignore fields they do not know, so a newer issuer that adds a field does not break an
older client.
"""

from __future__ import annotations

from services.issuer.schemas import (
    AuditEntryObject,
    AuditList,
    CreatedKey,
    KeyList,
    KeyObject,
    Notify,
    PreviousKey,
    RotatedKey,
    WebhookSecret,
)
from shared.events import Environment, Plan, RateLimit
from shared.validation import Code, RateLimitState, ValidationResult

__all__ = [
    "AuditEntryObject",
    "AuditList",
    "Code",
    "CreatedKey",
    "Environment",
    "KeyList",
    "KeyObject",
    "Notify",
    "Plan",
    "PreviousKey",
    "RateLimit",
    "RateLimitState",
    "RotatedKey",
    "ValidationResult",
    "WebhookSecret",
]
