"""Outside-world adapters of the notifier: SMTP (aiosmtplib), webhooks (httpx), the issuer (NATS)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
import httpx
from nats.aio.client import Client as NatsClient

from shared.crypto import FieldCipher
from shared.events import CMD_PREFIX

from . import domain
from .service import Result

WEBHOOK_SECRET_CONTEXT = "webhook-secret"


class SmtpMailer:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    async def send(self, message: EmailMessage) -> Result:
        try:
            _, reply = await aiosmtplib.send(
                message, hostname=self.host, port=self.port, timeout=self.timeout
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            outcome = (
                domain.RETRY if all(domain.classify_smtp(c) == domain.RETRY for c in codes) else domain.FAILED
            )
            return Result(outcome, f"recipients refused: {codes}")
        except aiosmtplib.SMTPResponseException as exc:
            return Result(domain.classify_smtp(exc.code), f"SMTP {exc.code} {exc.message}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Result(domain.classify_smtp(None), f"{type(exc).__name__}: {exc}")
        return Result(domain.DELIVERED, f"SMTP accepted: {reply}")


class HttpWebhookSender:
    def __init__(self, client: httpx.AsyncClient | None = None, timeout: float = 10.0) -> None:
        self.client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Result(domain.classify_http(None), f"{type(exc).__name__}: {exc}")
        retry_after = domain.parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        return Result(domain.classify_http(response.status_code), f"HTTP {response.status_code}", retry_after)

    async def close(self) -> None:
        await self.client.aclose()


class IssuerSecrets:
    """The account's `whsec_` secret, asked of the issuer each time (it may have been rotated); it travels
    sealed with the shared field-encryption keys."""

    def __init__(
        self, connection: Callable[[], NatsClient], cipher: FieldCipher, timeout: float = 5.0
    ) -> None:
        self._connection = connection
        self.cipher = cipher
        self.timeout = timeout

    async def webhook_secret(self, account_id: str) -> str | None:
        reply = await self._connection().request(
            f"{CMD_PREFIX}.webhook_secret",
            json.dumps({"account_id": account_id}).encode(),
            timeout=self.timeout,
        )
        answer = json.loads(reply.data)
        sealed = answer.get("sealed")
        return self.cipher.decrypt(sealed, context=WEBHOOK_SECRET_CONTEXT) if sealed else None
