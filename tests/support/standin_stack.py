"""`python -m tests.support.standin_stack <data_dir> <nats_port> [stop_timeout]`: `cnx-keys up` with
stand-in children (tests.support.standin_service), so the supervisor is tested without the services."""

from __future__ import annotations

import sys
from pathlib import Path

from services.devstack import UpOptions, up
from services.devstack.stack import SERVICES
from services.devstack.supervisor import ChildSpec
from shared.settings import Settings


def main() -> int:
    data_dir, nats_port = Path(sys.argv[1]), int(sys.argv[2])
    stop_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    settings = Settings()
    children = [
        ChildSpec(name, [sys.executable, "-m", "tests.support.standin_service", name], settings.port(name))
        for name, _, _ in SERVICES
    ]
    options = UpOptions(
        data_dir=data_dir,
        nats_port=nats_port,
        nats_monitor_port=0,
        ready_timeout=20.0,
        stop_timeout=stop_timeout,
        children=children,
    )
    return up(options)


if __name__ == "__main__":
    sys.exit(main())
