"""`cnx-keys`: the project's command line. `up` runs the local stack; `migrate` applies schema
migrations; `asyncapi` prints the event contract; the management commands (login, logout, keys,
webhook-secret, audit) come from cnx_keys.cli, built on the typed management client."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from typer.main import get_command

from cnx_keys.cli import CliState, register
from cnx_keys.profiles import ENV_CONFIG, config_path

app = typer.Typer(
    name="cnx-keys",
    no_args_is_help=True,
    # A traceback could print local variables (keys among them) and says nothing a user can act on:
    # errors a user can fix are one line on stderr (cnx_keys.cli.handles_errors).
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"cnx-keys {version('cloudnexus-keys')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar=ENV_CONFIG,
            show_envvar=True,
            help="Profile file (default: $XDG_CONFIG_HOME/cnx-keys/config.toml, else ~/.config/...).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """CloudNexus Keys: create, list, rotate, revoke and renew API keys, and run the stack locally.

    Example session:

        cnx-keys login --api-url http://localhost:8080 < .data/bootstrap-admin-key
        cnx-keys keys create --name "Production Backend" --env prod --scope compute:read
        cnx-keys keys list
    """
    ctx.obj = CliState(config_path(config))


@app.command(rich_help_panel="Local stack")
def up(
    data_dir: Annotated[
        Path,
        typer.Option(
            help="Where NATS data, SQLite files, mail, logs and secrets live ($CNX_DATA_DIR or .data)."
        ),
    ] = Path(os.environ.get("CNX_DATA_DIR") or ".data"),
    nats_port: Annotated[int, typer.Option(help="Embedded nats-server port.")] = 4333,
    nats_monitor_port: Annotated[
        int, typer.Option(help="Embedded nats-server monitoring port, 0 for none.")
    ] = 8222,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for every /readyz.")] = 60.0,
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds each process gets after SIGTERM before SIGKILL.")
    ] = 10.0,
) -> None:
    """Run NATS, the four services, the demo API and a mail sink locally.

    State lives under CNX_DATA_DIR (default .data). Set CNX_NATS_URL or CNX_SMTP_HOST to use real
    servers instead of the embedded ones.

    Example:

        cnx-keys up --data-dir .data
    """
    # Imported here so `cnx-keys --help` stays fast and works without the stack's dependencies.
    from services.devstack import UpOptions
    from services.devstack import up as run_up

    options = UpOptions(
        data_dir=data_dir,
        nats_port=nats_port,
        nats_monitor_port=nats_monitor_port,
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
    )
    raise typer.Exit(run_up(options))


@app.command(rich_help_panel="Local stack")
def migrate(
    services: Annotated[
        list[str] | None, typer.Argument(metavar="SERVICE", help="issuer, validator, rotator, notifier")
    ] = None,
) -> None:
    """Bring each service's store to this release's schema.

    Applies the Alembic migrations of each named service (default: all) to the store its settings name
    (CNX_<SERVICE>_DATABASE_URL, else a SQLite file in CNX_DATA_DIR).

    Example:

        cnx-keys migrate issuer
    """
    import asyncio

    from services.migrate import migrate_services

    raise typer.Exit(asyncio.run(migrate_services(services or [])))


@app.command("bootstrap-admin", rich_help_panel="Local stack")
def bootstrap_admin(
    account: Annotated[str, typer.Option(help="The account whose first key this is.")] = "default",
    out: Annotated[Path | None, typer.Option(help="Write the key to this file (mode 0600).")] = None,
) -> None:
    """Mint the first admin key of an account with no keys, in a cluster (run it in an issuer pod).

    The key is printed only to a terminal (or written to --out), never to a log.

    Example:

        kubectl exec -it -n cnx-keys deploy/cnx-issuer -- cnx-keys bootstrap-admin
    """
    import asyncio

    from services.bootstrap import bootstrap_admin as mint

    raise typer.Exit(asyncio.run(mint(account, out)))


@app.command(rich_help_panel="Local stack")
def asyncapi(
    out: Annotated[Path | None, typer.Option(help="Write it to this file instead of stdout.")] = None,
) -> None:
    """Print the event contract as an AsyncAPI document (JSON).

    Example:

        cnx-keys asyncapi --out docs/asyncapi.json
    """
    from shared.contract import asyncapi_json

    text = asyncapi_json()
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)


register(app)


def main(argv: Sequence[str] | None = None) -> int:
    command = get_command(app)
    try:
        command.main(args=list(argv) if argv is not None else None, prog_name="cnx-keys")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
