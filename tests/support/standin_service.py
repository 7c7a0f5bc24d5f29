"""A stand-in for a service process, to test supervision without the real services.

`python -m tests.support.standin_service <name>` (or STANDIN_NAME=<name>) serves `/readyz` on the port
the settings give <name>, and records what it was started with. Behaviour per name, STANDIN_<NAME>=
  crash         exit 3 at once, after a line of log
  never-ready   answer /readyz with 503
  ignore-term   ignore SIGTERM (the supervisor must SIGKILL it)
  die-later     become ready, then exit 4 when the file $STANDIN_DIE_FILE appears
The issuer stand-in writes a bootstrap key file as the real one does, mode 0600, if none exists.
STANDIN_REPORT_DIR receives <name>.json (its CNX_ environment and pid) and stop-order lines.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.settings import Settings


def main() -> None:
    # The name comes as an argument from the supervisor, or from the env under ServiceProcess (no args).
    name = sys.argv[1] if len(sys.argv) > 1 else os.environ["STANDIN_NAME"]
    mode = os.environ.get(f"STANDIN_{name.upper()}", "")
    report_dir = Path(os.environ["STANDIN_REPORT_DIR"]) if os.environ.get("STANDIN_REPORT_DIR") else None
    print(f"{name} stand-in starting (mode {mode or 'normal'})", flush=True)
    if mode == "crash":
        print(f"{name}: simulated start-up failure", flush=True)
        sys.exit(3)

    settings = Settings()
    if report_dir is not None:
        report = {"pid": os.getpid(), "env": {k: v for k, v in os.environ.items() if k.startswith("CNX_")}}
        (report_dir / f"{name}.json").write_text(json.dumps(report))

    key_file = settings.bootstrap_admin_key_file
    if name == "issuer" and key_file and not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"cnx_dev_standin{secrets.token_hex(8)}\n")

    ready_status = 503 if mode == "never-ready" else 200

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = ready_status if self.path == "/readyz" else 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            print(f"{name}: {format % args}", flush=True)

    server = ThreadingHTTPServer((settings.host, settings.port(name)), Handler)

    def on_term(signum: int, frame: object) -> None:
        if report_dir is not None:
            with open(report_dir / "stop-order", "a") as handle:
                handle.write(f"{name}\n")
        if mode == "ignore-term":
            print(f"{name}: ignoring SIGTERM", flush=True)
            return
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    if mode == "die-later":
        die_file = Path(os.environ["STANDIN_DIE_FILE"])

        def die_when_told() -> None:
            while not die_file.exists():
                time.sleep(0.05)  # polls a file the test creates; nothing else to wait on
            print(f"{name}: dying as told", flush=True)
            os._exit(4)

        threading.Thread(target=die_when_told, daemon=True).start()
    print(f"{name} stand-in ready on {settings.port(name)}", flush=True)
    server.serve_forever(poll_interval=0.05)  # a prompt shutdown() keeps the stop-order tests fast
    print(f"{name} stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
