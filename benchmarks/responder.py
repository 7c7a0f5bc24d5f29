"""The processes the NATS and HTTP figures measure, each under uvloop, started by the benchmark:

    python -m benchmarks.responder nats-echo URL SUBJECT          bare nats-py responder echoing the payload
    python -m benchmarks.responder nats-validator URL KEYS        the validator's `keys.validate` handler
    python -m benchmarks.responder http-bare PORT                 bare ASGI app, stock uvicorn, answers 200
    python -m benchmarks.responder http-validator PORT KEYS       the validator's forward-auth app, its server

The validator processes build their projection in-process from the benchmark's key set (`common`),
not through the issuer and the event stream (that path is the hydration and propagation figures), and
run the real entrypoints: `cluster.Cluster` (its lean `keys.validate` connection, natswire.py, and
owner forwarding) and `http.ForwardAuthApp`. Each prints `ready` on stdout when it takes requests,
and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from typing import Any

import nats
import uvloop

from . import common


def _service(keys: int) -> Any:
    from services.validator.service import ValidatorService

    projection, _ = common.build_projection(keys)
    service = ValidatorService(None, peppers=[common.PEPPER])  # type: ignore[arg-type]  (no store needed)
    service.projection = projection
    service.hydrated = True
    # As the validator process does after hydration (ValidatorService(freeze_heap=True)).
    gc.collect()
    gc.freeze()
    return service


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()


async def nats_echo(url: str, subject: str) -> None:
    nc = await nats.connect(url, name="bench-echo")

    async def echo(msg: Any) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(subject, queue="validators", cb=echo)
    await nc.flush()
    await _until_stopped()
    await nc.close()


async def nats_validator(url: str, keys: int) -> None:
    from services.validator.cluster import Cluster
    from services.validator.natswire import WireClient

    service = _service(keys)
    nc = await nats.connect(url, name="bench-validator")
    wire = WireClient(url, name="bench-validator-validate")
    await wire.start()
    cluster = Cluster(nc, service, "bench-v0", wire=wire, heartbeat=0.2)
    await cluster.start()
    await nc.flush()
    await _until_stopped()
    await cluster.stop()
    await wire.close()
    await nc.close()


async def _bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def serve(app: Any, port: int, *, bounded: bool = False, respond: Any = None) -> None:
    import uvicorn

    from shared.httpserver import GracefulServer, HttpLimits, server_config

    if bounded:
        # The validator's own server (shared.httpserver.serve_http): httptools with the bounds every
        # port has (head limit, head deadline, connection cap), at their defaults, and the responder
        # that answers what needs no waiting without an ASGI cycle.
        config = server_config(app, HttpLimits(), host="127.0.0.1", port=port, respond=respond)
        server: uvicorn.Server = GracefulServer(config)
    else:
        # The ceiling: stock uvicorn with httptools, the same settings otherwise.
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            http="httptools",
            loop="uvloop",
            proxy_headers=False,
        )
        server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.05)
    await _until_stopped()
    server.should_exit = True
    await task


async def http_validator(port: int, keys: int) -> None:
    from prometheus_client import CollectorRegistry

    from services.validator.cluster import Cluster
    from services.validator.http import ForwardAuthApp, forward_auth_server

    # A single replica (no NATS connection): Cluster.validate answers with this replica's own buckets.
    cluster = Cluster(None, _service(keys), "bench-v0")
    registry = CollectorRegistry()
    forward_auth = ForwardAuthApp(
        cluster.validate,
        registry,
        trusted_proxies=["127.0.0.1/32"],
        ready=lambda: True,
        validate_now=cluster.validate_now,
    )
    # As the validator composes its port (ValidatorRuntime): the request metrics included.
    app, respond = forward_auth_server(forward_auth, registry)
    await serve(app, port, bounded=True, respond=respond)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "nats-echo":
        coro = nats_echo(args[0], args[1])
    elif mode == "nats-validator":
        coro = nats_validator(args[0], int(args[1]))
    elif mode == "http-bare":
        coro = serve(_bare_app, int(args[0]))
    elif mode == "http-validator":
        coro = http_validator(int(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    uvloop.run(coro)


if __name__ == "__main__":
    main()
