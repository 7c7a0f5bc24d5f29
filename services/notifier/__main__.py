"""python -m services.notifier"""

import asyncio

from shared.httpserver import serve_http
from shared.observability import configure_logging
from shared.settings import Settings

from .app import create_app


def main() -> None:
    settings = Settings()
    configure_logging("notifier", settings.log_level, settings.log_format)
    asyncio.run(serve_http(create_app(settings), settings, settings.notifier_port))


if __name__ == "__main__":
    main()
