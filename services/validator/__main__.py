"""python -m services.validator"""

import uvloop

from shared.httpserver import serve_http
from shared.observability import configure_logging
from shared.settings import Settings

from .app import ValidatorRuntime


async def run(settings: Settings) -> None:
    runtime = ValidatorRuntime(settings, freeze_heap=True)
    await runtime.start()
    try:
        # Readiness false first; keys.validate keeps answering until runtime.stop() drains it.
        await serve_http(
            runtime.app,
            settings,
            settings.validator_port,
            on_drain=lambda: setattr(runtime, "started", False),
            respond=runtime.respond,
        )
    finally:
        await runtime.stop()


def main() -> None:
    settings = Settings()
    configure_logging("validator", settings.log_level, settings.log_format)
    # uvloop: the hot path is one NATS message or HTTP request after another, and its event loop and
    # transports cost less per message than asyncio's; it is also what `make bench` measures.
    uvloop.run(run(settings))


if __name__ == "__main__":
    main()
