"""`cnx-keys`: the project's command line. `up` runs the local stack; `migrate` is reserved for schema
migrations."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnx-keys", description="CloudNexus Keys: API keys and tokens.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="run NATS, the four services, the demo API and a mail sink locally",
        description=(
            "Run the whole stack on this machine, state under CNX_DATA_DIR (default .data). "
            "Set CNX_NATS_URL or CNX_SMTP_HOST to use real servers instead of the embedded ones."
        ),
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CNX_DATA_DIR") or ".data"),
        help="where NATS data, SQLite files, mail, logs and secrets live (default: $CNX_DATA_DIR or .data)",
    )
    up.add_argument("--nats-port", type=int, default=4333, help="embedded nats-server port (default 4333)")
    up.add_argument(
        "--nats-monitor-port",
        type=int,
        default=8222,
        help="embedded nats-server monitoring port, 0 for none (default 8222)",
    )
    up.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for every /readyz (default 60)"
    )
    up.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds each process gets after SIGTERM before SIGKILL (default 10)",
    )

    migrate = commands.add_parser(
        "migrate",
        help="bring each service's store to this release's schema",
        description=(
            "Apply the Alembic migrations of each named service (default: all) to the store its "
            "settings name (CNX_<SERVICE>_DATABASE_URL, else a SQLite file in CNX_DATA_DIR)."
        ),
    )
    migrate.add_argument(
        "services", nargs="*", metavar="SERVICE", help="issuer, validator, rotator, notifier"
    )
    asyncapi = commands.add_parser("asyncapi", help="print the event contract as an AsyncAPI document (JSON)")
    asyncapi.add_argument("--out", type=Path, help="write it to this file instead of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        # Imported here so `cnx-keys --help` stays fast and works without the stack's dependencies.
        from services.devstack import UpOptions, up

        return up(
            UpOptions(
                data_dir=args.data_dir,
                nats_port=args.nats_port,
                nats_monitor_port=args.nats_monitor_port,
                ready_timeout=args.ready_timeout,
                stop_timeout=args.stop_timeout,
            )
        )
    if args.command == "migrate":
        import asyncio

        from services.migrate import migrate_services

        return asyncio.run(migrate_services(args.services))
    if args.command == "asyncapi":
        from shared.contract import asyncapi_json

        text = asyncapi_json()
        if args.out:
            args.out.write_text(text)
        else:
            print(text, end="")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
