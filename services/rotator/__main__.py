"""python -m services.rotator"""

import uvloop

from shared.httpserver import serve_http
from shared.observability import configure_logging
from shared.settings import Settings

from .app import create_app


def main() -> None:
    settings = Settings()
    configure_logging("rotator", settings.log_level, settings.log_format)
    # uvloop: under a burst of due schedules the rotator is CPU-bound on NATS messages, and uvloop's
    # event loop and transports cost less per message than asyncio's (as in services/validator).
    uvloop.run(serve_http(create_app(settings), settings, settings.rotator_port))


if __name__ == "__main__":
    main()
