"""python -m services.issuer"""

import uvloop

from shared.httpserver import serve_http
from shared.observability import configure_logging
from shared.settings import Settings

from .app import create_app


def main() -> None:
    settings = Settings()
    configure_logging("issuer", settings.log_level, settings.log_format)
    # uvloop, as the validator: each request crosses the loop several times (HTTP, the store's driver,
    # NATS), and uvloop's loop and transports cost less per crossing than asyncio's.
    uvloop.run(serve_http(create_app(settings, freeze_heap=True), settings, settings.issuer_port))


if __name__ == "__main__":
    main()
