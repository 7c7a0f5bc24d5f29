"""Where the fault cases' notices land: a webhook receiver that can be taken down and brought back,
and counts of the mails and delivery rows."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from shared.natsserver import free_port
from tests.faults.harness import Stores


class WebhookSink:
    """A webhook receiver on a fixed free port, in a thread: records every POST, answers 204.
    stop() and start() again take it down and bring it back on the same URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with sink._lock:
                    sink.bodies.append(orjson.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def count(self) -> int:
        with self._lock:
            return len(self.bodies)

    def notices(self) -> Counter[tuple[str, str]]:
        """(key id, type) -> how many webhooks arrived."""
        with self._lock:
            return Counter((b["key_id"], b["type"]) for b in self.bodies)


def mail_notices(mailbox: Any) -> Counter[tuple[str, str]]:
    """(key id, Message-ID) -> how many mails the SMTP server accepted. The notifier gives every notice
    its own Message-ID, the same on each attempt, so a count above 1 is a notice sent twice."""
    return Counter((str(m["X-CloudNexus-Key-Id"]), str(m["Message-ID"])) for m in list(mailbox.messages))


def mail_subjects(mailbox: Any, key_id: str) -> list[str]:
    return sorted(
        " ".join(str(m["Subject"]).split())
        for m in list(mailbox.messages)
        if m["X-CloudNexus-Key-Id"] == key_id
    )


def deliveries(stores: Stores) -> Counter[str]:
    """Notifier delivery rows by status."""
    return Counter(row[0] for row in stores.query("notifier", "SELECT status FROM notifier_deliveries"))
