"""The `cnx-keys` management commands (login, logout, keys ..., webhook-secret rotate, audit), built on
`ManagementClient`. services/cli.py mounts them beside `up`, `migrate` and `asyncapi`.

Conventions every command keeps:
- exit 0 on success, 1 when the API refused or could not be reached (its message on stderr, no
  traceback), 2 on a usage error (Typer's own);
- `--json` prints the API's answer as JSON on stdout; secrets appear only where the API returned them
  (create, rotate, webhook-secret rotate);
- a secret never comes from argv, where shell history and `ps` would keep it: the key a command calls
  with comes from CNX_API_KEY or the profile, `login` and `keys verify` read theirs from stdin (or a
  hidden prompt on a terminal);
- colours only on a terminal (rich decides, and honours NO_COLOR).
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import httpx
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from . import render
from .client import UNSET, ManagementClient, _Unset
from .errors import ApiError, ManagementError
from .models import KeyObject, Notify
from .profiles import (
    DEFAULT_API_URL,
    DEFAULT_PROFILE,
    ENV_PROFILE,
    ENV_URL,
    ConfigError,
    Profile,
    check_profile_name,
    config_path,
    remove_profile,
    resolve,
    save_profile,
    too_open,
)

P = ParamSpec("P")
R = TypeVar("R")

Env = Literal["prod", "stg", "dev"]
Status = Literal["active", "rotating", "expired", "revoked"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead of text.")]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        envvar=ENV_PROFILE,
        show_envvar=True,
        help="Profile to use (default: default). CNX_API_URL and CNX_API_KEY override it.",
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
KeyIdArgument = Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (key_...).")]


def _stdout() -> Console:
    # Not a terminal (a pipe, a file): wide lines, so a table is not folded at 80 columns.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, width=wide, soft_wrap=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CliState:
    """What the root callback knows for every command: where the profiles live."""

    config: Path


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if isinstance(obj, CliState):
        return obj
    return CliState(config_path())


def fail(message: str) -> typer.Exit:
    _stderr().print(Text("error: ", style="bold red") + render.text(message))
    return typer.Exit(1)


def describe(exc: ApiError) -> str:
    detail = exc.code if exc.field is None else f"{exc.code}, field {exc.field}"
    wait = f"; retry after {exc.retry_after:g}s" if exc.retry_after is not None else ""
    return f"{exc.message} ({exc.status} {detail}{wait})"


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """API and connection errors become one line on stderr and exit 1, never a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            raise fail(describe(exc)) from None
        except (ManagementError, ConfigError) as exc:
            raise fail(str(exc)) from None

    return run


def open_client(ctx: typer.Context, profile: str | None) -> ManagementClient:
    path = state(ctx).config
    credentials = resolve(path, profile)
    if credentials.source.startswith("profile") and too_open(path):
        _stderr().print(
            render.text(f"warning: {path} can be read by others; run `chmod 600 {path}`"), style="yellow"
        )
    try:
        return ManagementClient(credentials.api_url, credentials.api_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def print_json(value: BaseModel | dict[str, Any]) -> None:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def ask(question: str, default: str = "") -> str:
    """A line from stdin after a question on stderr (click's prompts write a space to stdout, which
    would land in a captured `$(...)`)."""
    suffix = f" [{default}]" if default else ""
    sys.stderr.write(f"{render.clean(question)}{suffix}: ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        sys.stderr.write("\n")
        raise typer.Abort()
    return line.strip() or default


def confirmed(question: str) -> bool:
    return ask(f"{question} [y/N]").lower() in ("y", "yes")


def cleartext(url: str) -> bool:
    """http:// to another machine (a loopback address or localhost is this machine)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    host = parsed.host.lower()
    local = host in ("localhost", "::1") or host.endswith(".localhost") or host.startswith("127.")
    return parsed.scheme == "http" and not local


def read_secret(prompt: str) -> str:
    """A secret from stdin: a hidden prompt on a terminal, else the piped text (one line)."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"{prompt}: ", stream=sys.stderr)
    else:
        value = sys.stdin.read()
    lines = [line.strip() for line in value.strip().splitlines() if line.strip()]
    if len(lines) != 1 or any(c.isspace() for c in lines[0]):
        raise typer.BadParameter("expected exactly one key on stdin", param_hint="stdin")
    return lines[0]


def print_secret(secret: str, headline: Text, notice: str) -> None:
    out = _stdout()
    out.print(headline)
    out.print()
    # Written as is (no console wrapping), on a line of its own, so it can be selected and copied.
    sys.stdout.write(f"    {secret}\n")
    sys.stdout.flush()
    out.print()
    out.print(render.text(notice, "yellow"))


app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(
    help="Create, list, show, rotate, revoke, renew, update, delete and verify API keys.",
    no_args_is_help=True,
)
webhook_app = typer.Typer(help="The account's webhook signing secret.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    """Mount the management commands on the root `cnx-keys` app."""
    root.command("login", rich_help_panel="Profiles")(login)
    root.command("logout", rich_help_panel="Profiles")(logout)
    root.add_typer(keys_app, name="keys", rich_help_panel="Management")
    root.add_typer(webhook_app, name="webhook-secret", rich_help_panel="Management")
    root.command("audit", rich_help_panel="Management")(audit)


# profiles


@handles_errors
def login(
    ctx: typer.Context,
    profile: Annotated[
        str, typer.Option("--profile", "-p", envvar=ENV_PROFILE, help="Profile to save.")
    ] = DEFAULT_PROFILE,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", envvar=ENV_URL, show_envvar=True, help="The management API's URL."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Check an admin key against the API and save it as a profile (mode 0600).

    Asks for the URL and the key on a terminal (the key hidden); otherwise reads the key from stdin.
    The key is saved only if the API accepts it for listing keys (`admin:read`).

    Examples:

        cnx-keys login
        cnx-keys login --api-url http://localhost:8080 < .data/bootstrap-admin-key
        cnx-keys login --profile staging --api-url https://keys.stg.example.com
    """
    check_profile_name(profile)
    path = state(ctx).config
    if api_url is None:
        api_url = ask("Management API URL", DEFAULT_API_URL) if sys.stdin.isatty() else DEFAULT_API_URL
    key = read_secret("Admin API key")
    try:
        with ManagementClient(api_url, key) as client:
            client.list_keys(limit=1)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except ApiError as exc:
        raise fail(f"the key was not accepted, nothing saved: {describe(exc)}") from None
    save_profile(path, Profile(profile, api_url.rstrip("/"), key))
    if cleartext(api_url):
        _stderr().print(
            render.text(f"warning: {api_url} is plain http: the key crosses the network unencrypted"),
            style="yellow",
        )
    if json_:
        print_json({"profile": profile, "api_url": api_url.rstrip("/"), "config": str(path)})
        return
    _stdout().print(
        render.text(f"Logged in to {api_url} as {key[:13]}... (profile {profile}, saved in {path})")
    )


@handles_errors
def logout(
    ctx: typer.Context,
    profile: Annotated[
        str, typer.Option("--profile", "-p", envvar=ENV_PROFILE, help="Profile to forget.")
    ] = DEFAULT_PROFILE,
    json_: JsonOption = False,
) -> None:
    """Forget a profile's key (the key itself stays valid: revoke it to end it).

    Example:

        cnx-keys logout --profile staging
    """
    path = state(ctx).config
    if not remove_profile(path, profile):
        raise fail(f"no profile {profile!r} in {path}")
    if json_:
        print_json({"profile": profile, "removed": True, "config": str(path)})
        return
    _stdout().print(render.text(f"Logged out: profile {profile} removed from {path}"))


# keys


@keys_app.command("create")
@handles_errors
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="A name people recognise.")],
    env: Annotated[Env, typer.Option("--env", "-e", help="The key's environment.")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", metavar="SCOPE", help="<resource>:<action>, repeat for more."),
    ],
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", help="Lifetime in days, 1-365 (API default 90).")
    ] = None,
    plan: Annotated[
        Literal["starter", "professional", "enterprise"] | None,
        typer.Option("--plan", help="Rate-limit plan (default: the account's)."),
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", metavar="CIDR", help="Allow only these ranges; repeat.")
    ] = None,
    auto_renew: Annotated[bool, typer.Option("--auto-renew", help="Renew instead of lapsing.")] = False,
    notify_email: Annotated[
        str | None, typer.Option("--notify-email", help="Expiry notices go here.")
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option("--webhook-url", help="Signed expiry webhooks go here.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the secret alone (for export KEY=$(...)).")
    ] = False,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Create a key and print its secret, once.

    Examples:

        cnx-keys keys create --name "Production Backend" --env prod --scope compute:read --scope storage:write
        export KEY=$(cnx-keys keys create --name ci --env dev --scope compute:read --quiet)
    """
    notify = None
    if notify_email or webhook_url:
        notify = {k: v for k, v in (("email", notify_email), ("webhook_url", webhook_url)) if v}
    with open_client(ctx, profile) as client:
        created = client.create_key(
            name=name,
            environment=env,
            scopes=scope,
            expires_in_days=expires_in_days,
            plan=plan,
            ip_allowlist=ip,
            auto_renew=auto_renew,
            notify=notify,
        )
    if json_:
        print_json(created)
    elif quiet:
        sys.stdout.write(created.key + "\n")
    else:
        now = _now()
        headline = render.text(
            f"Created {created.id} {created.name!r} ({created.environment}; {' '.join(created.scopes)}), "
            f"expires {render.dated(created.expires_at, now)}"
            + ("; auto-renew on" if created.auto_renew else "")
        )
        print_secret(created.key, headline, render.SECURITY_NOTICE)


@keys_app.command("list")
@handles_errors
def list_(
    ctx: typer.Context,
    status: Annotated[Status | None, typer.Option("--status", help="Only keys with this status.")] = None,
    env: Annotated[Env | None, typer.Option("--env", "-e", help="Only keys of this environment.")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Follow every page.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Keys per page.")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Start at this page (a previous next_cursor).")
    ] = None,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """List the account's keys, newest first.

    Examples:

        cnx-keys keys list
        cnx-keys keys list --status active --env prod --all
        cnx-keys keys list --all --json | jq -r '.data[].id'
    """
    with open_client(ctx, profile) as client:
        page = client.list_keys(status=status, environment=env, limit=limit, cursor=cursor)
        keys: list[KeyObject] = list(page.data)
        next_cursor = page.next_cursor
        while all_ and next_cursor:
            page = client.list_keys(status=status, environment=env, limit=limit, cursor=next_cursor)
            keys.extend(page.data)
            next_cursor = page.next_cursor
    if json_:
        print_json({"data": [key.model_dump(mode="json") for key in keys], "next_cursor": next_cursor})
        return
    if not keys:
        _stderr().print("no keys")
        return
    _stdout().print(render.key_table(keys, _now()))
    if next_cursor:
        _stderr().print(render.text(f"more keys: --all, or --cursor {next_cursor}"), style="dim")


@keys_app.command("show")
@handles_errors
def show(
    ctx: typer.Context, key_id: KeyIdArgument, profile: ProfileOption = None, json_: JsonOption = False
) -> None:
    """Show one key.

    Example:

        cnx-keys keys show key_2Xg...
    """
    with open_client(ctx, profile) as client:
        key = client.get_key(key_id)
    if json_:
        print_json(key)
    else:
        _stdout().print(render.key_details(key, _now()))


@keys_app.command("rotate")
@handles_errors
def rotate(
    ctx: typer.Context,
    key_id: KeyIdArgument,
    grace_hours: Annotated[
        float | None,
        typer.Option(
            "--grace-hours", min=0, max=168, help="How long the old key keeps working (default 24)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the new secret alone.")] = False,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Replace a key: a new one with the same settings, its secret printed once.

    The old key keeps working for the grace period (default 24 hours), then is revoked.

    Examples:

        cnx-keys keys rotate key_2Xg...
        cnx-keys keys rotate key_2Xg... --grace-hours 0
    """
    with open_client(ctx, profile) as client:
        rotated = client.rotate_key(key_id, grace_period_hours=grace_hours)
    if json_:
        print_json(rotated)
    elif quiet:
        sys.stdout.write(rotated.key + "\n")
    else:
        now = _now()
        headline = render.text(
            f"Rotated {rotated.previous.id} to {rotated.id} {rotated.name!r}; the old key works until "
            f"{render.dated(rotated.previous.grace_until, now)}"
        )
        print_secret(rotated.key, headline, render.SECURITY_NOTICE)


def confirm(client: ManagementClient, key_id: str, verb: str, consequence: str) -> None:
    key = client.get_key(key_id)
    question = f"{verb} {key.id} {key.name!r} ({key.prefix}..., {key.environment})? {consequence}"
    if not confirmed(question):
        raise fail("cancelled, nothing changed")


@keys_app.command("revoke")
@handles_errors
def revoke(
    ctx: typer.Context,
    key_id: KeyIdArgument,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded with the revocation.")] = None,
    yes: YesOption = False,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Revoke a key: every validator refuses it within a second. Asks first unless --yes.

    Example:

        cnx-keys keys revoke key_2Xg... --reason "leaked in a log" --yes
    """
    with open_client(ctx, profile) as client:
        if not yes:
            confirm(client, key_id, "Revoke", "Every request with it will be refused.")
        key = client.revoke_key(key_id, reason=reason)
    if json_:
        print_json(key)
    else:
        _stdout().print(render.text(f"Revoked {key.id} {key.name!r}: requests with it are refused."))


@keys_app.command("delete")
@handles_errors
def delete(
    ctx: typer.Context,
    key_id: KeyIdArgument,
    yes: YesOption = False,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Delete a key: it is revoked and stays listed with its history. Asks first unless --yes.

    Example:

        cnx-keys keys delete key_2Xg... --yes
    """
    with open_client(ctx, profile) as client:
        if not yes:
            confirm(client, key_id, "Delete", "It is revoked at once and stays listed as revoked.")
        key = client.delete_key(key_id)
    if json_:
        print_json(key)
    else:
        _stdout().print(render.text(f"Deleted {key.id} {key.name!r}: status {key.status}."))


@keys_app.command("renew")
@handles_errors
def renew(
    ctx: typer.Context,
    key_id: KeyIdArgument,
    days: Annotated[
        int | None, typer.Option("--days", min=1, max=365, help="Extend by this many days (API default).")
    ] = None,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Push a key's expiry out.

    Example:

        cnx-keys keys renew key_2Xg... --days 90
    """
    with open_client(ctx, profile) as client:
        key = client.renew_key(key_id, extend_days=days)
    if json_:
        print_json(key)
    else:
        _stdout().print(render.text(f"Renewed {key.id}: expires {render.dated(key.expires_at, _now())}"))


@keys_app.command("update")
@handles_errors
def update(
    ctx: typer.Context,
    key_id: KeyIdArgument,
    name: Annotated[str | None, typer.Option("--name", "-n", help="A new name.")] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", metavar="CIDR", help="Replace the IP allowlist with these ranges; repeat."),
    ] = None,
    any_ip: Annotated[bool, typer.Option("--any-ip", help="Clear the IP allowlist.")] = False,
    auto_renew: Annotated[
        bool | None, typer.Option("--auto-renew/--no-auto-renew", help="Turn auto-renew on or off.")
    ] = None,
    notify_email: Annotated[
        str | None, typer.Option("--notify-email", help="Send expiry notices here.")
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option("--webhook-url", help="Send signed expiry webhooks here.")
    ] = None,
    no_notify: Annotated[bool, typer.Option("--no-notify", help="Stop email and webhook notices.")] = False,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Change a key's name, IP allowlist, auto-renew or notification channels.

    --notify-email and --webhook-url each change their own channel and keep the other.

    Examples:

        cnx-keys keys update key_2Xg... --auto-renew
        cnx-keys keys update key_2Xg... --name "Backend (EU)" --ip 10.0.0.0/8 --ip 2001:db8::/32
    """
    if ip and any_ip:
        raise typer.BadParameter("--ip and --any-ip exclude each other", param_hint="--any-ip")
    if no_notify and (notify_email or webhook_url):
        raise typer.BadParameter(
            "--no-notify excludes --notify-email and --webhook-url", param_hint="--no-notify"
        )
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if ip:
        changes["ip_allowlist"] = ip
    elif any_ip:
        changes["ip_allowlist"] = []
    if auto_renew is not None:
        changes["auto_renew"] = auto_renew
    if not changes and not (notify_email or webhook_url or no_notify):
        raise typer.BadParameter("nothing to change: give at least one option", param_hint="options")
    with open_client(ctx, profile) as client:
        notify: Notify | dict[str, Any] | _Unset | None = UNSET
        if no_notify:
            notify = None
        elif notify_email or webhook_url:
            # The API replaces both channels at once: keep the one not named here.
            current = client.get_key(key_id).notify
            merged = current.model_dump(mode="json", exclude_none=True) if current else {}
            if notify_email:
                merged["email"] = notify_email
            if webhook_url:
                merged["webhook_url"] = webhook_url
            notify = merged
        key = client.update_key(key_id, notify=notify, **changes)
    if json_:
        print_json(key)
    else:
        out = _stdout()
        out.print(render.text(f"Updated {key.id}"))
        out.print(render.key_details(key, _now()))


@keys_app.command("verify")
@handles_errors
def verify(
    ctx: typer.Context,
    scope: Annotated[str | None, typer.Option("--scope", "-s", help="Check this scope too.")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="As if used from this address.")] = None,
    env: Annotated[Env | None, typer.Option("--env", "-e", help="Require this environment.")] = None,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Ask the validator about a key read from stdin (never from the command line).

    Exit 0 when the key is valid, 1 when it is not (the answer says why).

    Examples:

        echo "$KEY" | cnx-keys keys verify --scope compute:read
        cnx-keys keys verify < key.txt
    """
    key = read_secret("Key to verify")
    with open_client(ctx, profile) as client:
        result = client.verify_key(key, scope=scope, ip=ip, environment=env)
    if json_:
        print_json(result)
    else:
        _stdout().print(render.verification(result))
    if not result.valid:
        raise typer.Exit(1)


# account and audit


@webhook_app.command("rotate")
@handles_errors
def webhook_secret_rotate(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the secret alone.")] = False,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """Make a new whsec_ secret that signs the account's webhooks, and print it once.

    The previous one keeps signing beside it for an overlap, so receivers can switch without missing
    a delivery.

    Example:

        cnx-keys webhook-secret rotate
    """
    with open_client(ctx, profile) as client:
        secret = client.new_webhook_secret()
    if json_:
        print_json(secret)
    elif quiet:
        sys.stdout.write(secret.secret + "\n")
    else:
        print_secret(
            secret.secret,
            render.text("New webhook signing secret:"),
            "Store it now: it is shown only once. Check webhook signatures with it; the previous secret "
            "keeps signing beside it for a while.",
        )


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "an ISO 8601 time, e.g. 2026-05-01T00:00:00Z", param_hint="--since"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@handles_errors
def audit(
    ctx: typer.Context,
    key_id: Annotated[
        str | None, typer.Option("--key-id", "-k", help="Entries whose target or actor is this key.")
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action (key.created, auth.denied, ...).")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="At or after this ISO 8601 time.")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Follow every page.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Entries per page.")] = 20,
    profile: ProfileOption = None,
    json_: JsonOption = False,
) -> None:
    """The account's audit trail, newest first: every change and every refused call.

    Examples:

        cnx-keys audit --key-id key_2Xg...
        cnx-keys audit --action key.revoked --since 2026-05-01T00:00:00Z --json
    """
    when = _since(since)
    with open_client(ctx, profile) as client:
        page = client.list_audit(key_id=key_id, action=action, since=when, limit=limit)
        entries = list(page.data)
        next_cursor = page.next_cursor
        while all_ and next_cursor:
            page = client.list_audit(
                key_id=key_id, action=action, since=when, limit=limit, cursor=next_cursor
            )
            entries.extend(page.data)
            next_cursor = page.next_cursor
    if json_:
        print_json({"data": [e.model_dump(mode="json") for e in entries], "next_cursor": next_cursor})
        return
    if not entries:
        _stderr().print("no entries")
        return
    _stdout().print(render.audit_table(entries, _now()))
    if next_cursor:
        _stderr().print("more entries: --all", style="dim")
