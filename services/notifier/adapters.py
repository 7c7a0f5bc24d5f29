"""Outside-world adapters of the notifier: SMTP (aiosmtplib), webhooks (httpx), the issuer (NATS)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
import httpx
from nats.aio.client import Client as NatsClient

from shared.commands import WEBHOOK_SECRET_CONTEXT, CommandError, WebhookSecretsQuery, parse_secrets_reply
from shared.crypto import FieldCipher
from shared.webhook_targets import TargetPolicy, TargetRefused, TargetUnresolved

from . import domain
from .service import Result


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


# What is read of a receiver's answer at most: its status is all that counts, the rest is dropped with
# the connection (a receiver cannot make the notifier hold or decompress a large body).
MAX_RESPONSE_BYTES = 64 * 1024


class HttpWebhookSender:
    """POSTs one webhook, within the SSRF rule (shared/webhook_targets.py).

    The target is checked again at send time and the connection is dialled to the very addresses the
    check approved, with the original `Host` header and TLS server name (SNI, and the certificate
    verified for that name): the name is never looked up a second time, so a DNS answer that changes
    between the check and the connection (DNS rebinding) cannot steer it inside. Redirects are not
    followed; the whole attempt (DNS, connect, send, answer) is bounded by `timeout`; at most
    `max_response_bytes` of the answer are read. With a `proxy`, every webhook goes through it and the
    proxy resolves names (only address hosts and `localhost` are checked here).
    """

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        timeout: float = 10.0,
        proxy: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.proxy = proxy
        self.max_response_bytes = max_response_bytes
        # No keep-alive: a pooled connection is keyed by the address dialled, so it could carry another
        # host's webhook over a TLS session verified for the first one. Webhooks are few; a fresh
        # connection each is cheap. trust_env=False: HTTP(S)_PROXY in the environment must not quietly
        # take over the dialling (CNX_WEBHOOK_PROXY is the one way to use a proxy).
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=timeout,
            proxy=proxy,
            verify=verify,
            trust_env=False,
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(url, body, headers)
        except TimeoutError:
            return Result(domain.RETRY, f"no complete answer within {self.timeout:g}s")
        except TargetRefused as exc:
            # Permanent: retrying cannot make an internal address public (a new URL comes by PATCH).
            return Result(domain.FAILED, f"target refused: {exc.reason}")
        except TargetUnresolved as exc:
            return Result(domain.RETRY, f"target did not resolve: {exc}")
        except httpx.HTTPError as exc:  # could not connect (to any checked address, or to the proxy)
            return Result(domain.classify_http(None), f"{type(exc).__name__}: {exc}")

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        if self.proxy:
            self.policy.check_literal(url)
            return await self._send(httpx.URL(url), body, headers, {})
        target = await self.policy.check(url)
        headers = {**headers, "host": target.host_header}
        # An address host gets no SNI (and its certificate is checked for the address); a name gets its
        # own name as SNI and in the certificate check, though the socket goes to the checked address.
        extensions = {"sni_hostname": target.host} if target.scheme == "https" and not target.literal else {}
        failure = ""
        for address in target.addresses:
            dial = httpx.URL(url).copy_with(host=str(address))
            try:
                return await self._send(dial, body, headers, extensions)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = f"{type(exc).__name__}: {exc}"  # the next address, if there is one
        return Result(domain.classify_http(None), failure or "no address to connect to")

    async def _send(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], extensions: dict[str, str]
    ) -> Result:
        request = self.client.build_request("POST", url, content=body, headers=headers, extensions=extensions)
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise
        except httpx.HTTPError as exc:
            return Result(domain.classify_http(None), f"{type(exc).__name__}: {exc}")
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= self.max_response_bytes:
                    break
        except httpx.HTTPError:
            pass  # the status is in; a broken body does not change the outcome
        finally:
            await response.aclose()
        retry_after = domain.parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        detail = f"HTTP {response.status_code}"
        if response.is_redirect:
            detail += " (redirects are not followed)"
        return Result(domain.classify_http(response.status_code), detail, retry_after)

    async def close(self) -> None:
        await self.client.aclose()


class IssuerSecrets:
    """The account's `whsec_` secrets, asked of the issuer each time (they may have been rotated); they
    travel sealed with the shared field-encryption keys."""

    def __init__(
        self, connection: Callable[[], NatsClient], cipher: FieldCipher, timeout: float = 5.0
    ) -> None:
        self._connection = connection
        self.cipher = cipher
        self.timeout = timeout

    async def webhook_secrets(self, account_id: str) -> list[str]:
        """The current secret first, then any previous one still in its overlap. The issuer makes the
        account's first secret when it has none, so the answer is never empty from a working issuer."""
        query = WebhookSecretsQuery(account_id=account_id)
        reply = await self._connection().request(query.subject, query.encode(), timeout=self.timeout)
        answer = parse_secrets_reply(reply.data)  # a reply that is neither raises: the delivery retries
        if isinstance(answer, CommandError):
            raise RuntimeError(f"issuer refused {query.subject}: {answer.error} {answer.detail or ''}")
        sealed = [answer.sealed, *(s for s in answer.previous if s)]
        return [self.cipher.decrypt(s, context=WEBHOOK_SECRET_CONTEXT) for s in sealed]
