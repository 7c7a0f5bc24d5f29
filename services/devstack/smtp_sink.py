"""A local SMTP server that delivers nowhere: every message becomes a `.eml` file in a directory.

The notifier's real mail path (aiosmtplib, SMTP on the wire) runs unchanged in the dev stack, and a
developer reads the expiry notices with any mail client or `cat`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class _SaveToDirectory:
    """aiosmtpd handler: one file per accepted message."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):
            content = content.encode()
        # The envelope is what the notifier meant (recipients may differ from the To: header), and a
        # saved file is the only place left to see it.
        envelope_headers = (
            f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        final = self.mail_dir / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        partial = final.with_suffix(".eml.part")
        # Written aside then renamed, so anyone watching the directory never reads half a message.
        await asyncio.to_thread(_write_then_rename, partial, final, envelope_headers + content)
        return "250 Message accepted for delivery"


def _write_then_rename(partial: Path, final: Path, data: bytes) -> None:
    partial.write_bytes(data)
    os.replace(partial, final)


class SmtpSink:
    """aiosmtpd on the running event loop. Port 0 picks a free one; `port` tells which after start()."""

    def __init__(self, mail_dir: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.mail_dir = mail_dir
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> SmtpSink:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        handler = _SaveToDirectory(self.mail_dir)

        def protocol() -> Any:
            return SMTP(handler, hostname="cnx-keys-smtp-sink", enable_SMTPUTF8=True)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Open sessions would keep wait_closed() waiting (Python 3.12+); a sink has nothing to flush.
            close_clients = getattr(self._server, "close_clients", None)
            if close_clients is not None:
                close_clients()
            await self._server.wait_closed()
            self._server = None

    def messages(self) -> list[Path]:
        """Saved messages, oldest first."""
        return sorted(self.mail_dir.glob("*.eml"))
