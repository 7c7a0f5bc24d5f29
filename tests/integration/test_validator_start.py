"""A validator starting first on a new nats-server (`make up` on a fresh machine, a new cluster): it
declares the streams itself, catches up with an empty stream at once, and answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.validator.app import ValidatorRuntime
from shared.events import STREAM_EVENTS
from shared.settings import Settings
from shared.validation import Code


async def test_a_validator_first_on_a_new_server_declares_the_streams(
    make_nats_server: Any, tmp_path: Path
) -> None:
    nats = make_nats_server()
    settings = Settings(nats_url=nats.url, data_dir=tmp_path, instance_id="first")
    runtime = ValidatorRuntime(settings)
    try:
        await runtime.start()
        assert runtime.ready()
        assert runtime._nc is not None
        info = await runtime._nc.jetstream().stream_info(STREAM_EVENTS)
        assert info.state.messages == 0
        assert runtime.service.validate("cnx_prod_" + "A" * 36, throttle=False)["code"] == Code.MALFORMED
    finally:
        await runtime.stop()
