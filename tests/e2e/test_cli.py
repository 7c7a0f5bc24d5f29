"""Issue 15's checks of the `cnx-keys` CLI: the installed console script run as a user runs it, against a
real stack (nats-server, issuer, validator and the demo API as processes), one stack for the module.

Every run goes through `Cli.run`, which also checks what must hold for any command: no traceback, and
no terminal escape codes when the output is not a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.cli import main as cli_main
from shared.natsserver import free_port

from .stack import ProcessStack, poll, stack_with_own_nats

CNX_KEYS = Path(sys.executable).with_name("cnx-keys")
TOKEN = re.compile(r"cnx_(prod|stg|dev)_[0-9A-Za-z]{36}")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    # The management API's own rate limit off: the module makes many calls with the admin key.
    with stack_with_own_nats(
        tmp_path_factory.mktemp("cli"), ["issuer", "validator", "demo"], CNX_MANAGEMENT_RATE_LIMIT="0"
    ) as running:
        yield running


class Cli:
    """`cnx-keys` as a subprocess with a home of its own (no profile of the machine's is ever read)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CNX_") and k not in ("NO_COLOR", "FORCE_COLOR", "XDG_CONFIG_HOME", "COLUMNS")
        }
        self.env = {**base, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg"), **env}

    @property
    def config_file(self) -> Path:
        return self.home / "xdg" / "cnx-keys" / "config.toml"

    def run(
        self, *args: str, input: str | None = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert CNX_KEYS.exists(), f"the console script is not installed at {CNX_KEYS}"
        merged = {**self.env, **(env or {})}
        done = subprocess.run(
            [str(CNX_KEYS), *args], input=input, env=merged, capture_output=True, text=True, timeout=60
        )
        for stream in (done.stdout, done.stderr):
            assert "Traceback" not in stream, stream
            assert "\x1b[" not in stream, f"colour codes on a pipe: {stream!r}"
        return done

    def ok(
        self, *args: str, input: str | None = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = self.run(*args, input=input, env=env)
        assert done.returncode == 0, f"cnx-keys {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done

    def json(self, *args: str, input: str | None = "") -> dict[str, object]:
        return json.loads(self.ok(*args, "--json", input=input).stdout)  # type: ignore[no-any-return]

    def create(
        self, name: str, *extra: str, env: str = "prod", scope: str = "compute:read"
    ) -> dict[str, object]:
        return self.json("keys", "create", "--name", name, "--env", env, "--scope", scope, *extra)


@pytest.fixture
def cli(stack: ProcessStack, tmp_path: Path) -> Cli:
    """Called the way issue 15 checks it: CNX_API_URL and CNX_API_KEY set from the bootstrap key."""
    return Cli(tmp_path, {"CNX_API_URL": stack.url("issuer"), "CNX_API_KEY": stack.admin_key})


@pytest.fixture
def anonymous(tmp_path: Path) -> Cli:
    """No key in the environment: only a profile can give one."""
    return Cli(tmp_path, {})


def key_status(stack: ProcessStack, key_id: str) -> str:
    response = httpx.get(f"{stack.url('issuer')}/v2/keys/{key_id}", headers=stack.admin(), timeout=10)
    return str(response.json()["status"])


# create, and the key working against the demo API; revoke refusing it within a second


def test_created_key_works_against_the_demo_api_and_revoke_refuses_it_within_a_second(
    cli: Cli, stack: ProcessStack
) -> None:
    # As a script does it: export KEY=$(cnx-keys keys create ... --quiet)
    script = (
        f"export KEY=$('{CNX_KEYS}' keys create --name 'CLI demo' --env prod --scope compute:read --quiet) "
        '&& printf "%s" "$KEY"'
    )
    done = subprocess.run(["bash", "-c", script], env=cli.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = done.stdout
    assert TOKEN.fullmatch(key), f"--quiet must print the secret alone: {key!r}"
    assert stack.instances_status(key) == 200  # read-your-writes: works the moment create returned

    key_id = cli.json("keys", "verify", input=key)["key_id"]
    assert isinstance(key_id, str)
    revoked = cli.ok("keys", "revoke", key_id, "--yes", "--reason", "test")
    refused_after = poll(lambda: stack.instances_status(key) == 401, timeout=1.0, interval=0.01)
    assert refused_after < 1.0
    assert f"Revoked {key_id}" in revoked.stdout
    assert key_status(stack, key_id) == "revoked"


def test_create_prints_the_secret_once_with_the_security_notice(cli: Cli, stack: ProcessStack) -> None:
    done = cli.ok(
        "keys", "create", "--name", "Production Backend", "--env", "prod",
        "--scope", "compute:read", "--scope", "storage:write", "--expires-in-days", "30",
        "--ip", "10.0.0.0/8", "--ip", "2001:db8::/32", "--auto-renew",
        "--notify-email", "ops@example.com", "--webhook-url", "https://hooks.example.invalid/cnx",
    )  # fmt: skip
    secrets = TOKEN.findall(done.stdout)
    assert len(secrets) == 1, done.stdout
    assert "shown only once" in done.stdout
    assert "Production Backend" in done.stdout and "auto-renew on" in done.stdout

    created = cli.create("json create", "--plan", "starter", env="stg")
    assert TOKEN.fullmatch(str(created["key"])), "--json carries the secret the API returned"
    assert created["environment"] == "stg" and created["plan"] == "starter"
    shown = cli.json("keys", "show", str(created["id"]))
    assert "key" not in shown, "a secret only where the API returned one"
    assert shown["id"] == created["id"]


def test_a_bad_scope_exits_1_with_the_api_message_naming_it(cli: Cli) -> None:
    done = cli.run("keys", "create", "--name", "bad", "--env", "prod", "--scope", "compute:fly")
    assert done.returncode == 1
    assert "compute:fly" in done.stderr and "unknown scope" in done.stderr
    assert done.stdout == ""


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli.run("keys", "create", "--name", "x", "--scope", "compute:read").returncode == 2  # no --env
    assert cli.run("keys", "create", "--name", "x", "--env", "qa", "--scope", "compute:read").returncode == 2
    assert cli.run("keys", "frobnicate").returncode == 2
    assert cli.run("keys", "update", "key_x").returncode == 2  # nothing to change
    assert cli.run("keys", "list", "--limit", "0").returncode == 2


# list


def test_list_shows_a_table_json_and_follows_pages(cli: Cli, stack: ProcessStack) -> None:
    ids = [str(cli.create(f"page key {n}", env="stg")["id"]) for n in range(3)]

    table = cli.ok("keys", "list", "--env", "stg", "--all", "--limit", "2")
    header = table.stdout.splitlines()[0].split()
    assert header == ["ID", "Key", "Name", "Env", "Last", "Used", "Status", "Expires"]
    for key_id in ids:
        assert key_id in table.stdout
    row = next(line for line in table.stdout.splitlines() if ids[1] in line)
    assert "page key 1" in row and "cnx_stg_" in row and "never" in row and "active" in row
    assert "in 3 months" in row  # the API's default 90 days, in words

    one_page = cli.ok("keys", "list", "--env", "stg", "--limit", "2")
    assert len(one_page.stdout.strip().splitlines()) == 3  # the header and two keys
    assert "--all" in one_page.stderr

    listed = cli.json("keys", "list", "--env", "stg", "--all", "--limit", "2")
    assert listed["next_cursor"] is None
    assert {k["id"] for k in listed["data"]} >= set(ids)  # type: ignore[union-attr, index]
    page = cli.json("keys", "list", "--env", "stg", "--limit", "2")
    assert len(page["data"]) == 2 and page["next_cursor"]  # type: ignore[arg-type]
    assert cli.json("keys", "list", "--status", "revoked", "--env", "stg")["data"] == []

    # Last Used in words, once the validator's usage batch has reached the issuer.
    used = cli.create("used key")
    assert stack.instances_status(str(used["key"])) == 200
    poll(
        lambda: cli.json("keys", "show", str(used["id"]))["last_used_at"] is not None,
        timeout=15,
        interval=0.5,
    )
    listing = cli.ok("keys", "list", "--all").stdout
    row = next(line for line in listing.splitlines() if str(used["id"]) in line)
    assert re.search(r"just now|\d+ secs? ago", row), row


# show, rotate, renew, update, delete


def test_show_rotate_renew_update_and_delete(cli: Cli, stack: ProcessStack) -> None:
    created = cli.create("lifecycle")
    key_id = str(created["id"])

    shown = cli.ok("keys", "show", key_id).stdout
    assert key_id in shown and "lifecycle" in shown and "compute:read" in shown and "Auto-renew" in shown

    before = datetime.fromisoformat(str(created["expires_at"]))
    renewed = cli.json("keys", "renew", key_id, "--days", "10")
    after = datetime.fromisoformat(str(renewed["expires_at"]))
    assert after - before == timedelta(days=10)
    assert "Renewed" in cli.ok("keys", "renew", key_id, "--days", "1").stdout

    on = cli.json("keys", "update", key_id, "--auto-renew")
    assert on["auto_renew"] is True
    off = cli.json("keys", "update", key_id, "--no-auto-renew", "--name", "renamed", "--ip", "10.0.0.0/8")
    assert off["auto_renew"] is False and off["name"] == "renamed" and off["ip_allowlist"] == ["10.0.0.0/8"]
    assert cli.json("keys", "update", key_id, "--any-ip")["ip_allowlist"] == []
    cli.ok("keys", "update", key_id, "--notify-email", "ops@example.com")
    # Each channel option changes its own channel: the email stays when the webhook is set.
    both = cli.json("keys", "update", key_id, "--webhook-url", "https://hooks.example.invalid/k")
    assert both["notify"] == {"email": "ops@example.com", "webhook_url": "https://hooks.example.invalid/k"}
    assert cli.json("keys", "update", key_id, "--no-notify")["notify"] is None
    assert re.search(r"Auto-renew\s+on", cli.ok("keys", "update", key_id, "--auto-renew").stdout)

    rotated = cli.ok("keys", "rotate", key_id, "--grace-hours", "1")
    secrets = TOKEN.findall(rotated.stdout)
    assert len(secrets) == 1 and "shown only once" in rotated.stdout
    new_key = TOKEN.search(rotated.stdout).group(0)  # type: ignore[union-attr]
    assert stack.instances_status(new_key) == 200
    assert key_status(stack, key_id) == "rotating"
    new_id = str(cli.json("keys", "verify", input=new_key)["key_id"])
    again = cli.json("keys", "rotate", new_id, "--grace-hours", "0")
    assert TOKEN.fullmatch(str(again["key"]))
    assert again["previous"]["id"] == new_id  # type: ignore[index]

    # A rotating key cannot be renewed: the API's refusal, exit 1.
    refused = cli.run("keys", "renew", key_id)
    assert refused.returncode == 1 and "409" in refused.stderr and key_id in refused.stderr

    declined = cli.run("keys", "delete", str(again["id"]), input="n\n")
    assert declined.returncode == 1 and "nothing changed" in declined.stderr
    assert key_status(stack, str(again["id"])) == "active"
    deleted = cli.json("keys", "delete", str(again["id"]), "--yes")
    assert deleted["status"] == "revoked"


def test_revoke_asks_unless_yes(cli: Cli, stack: ProcessStack) -> None:
    key_id = str(cli.create("ask first")["id"])
    declined = cli.run("keys", "revoke", key_id, input="n\n")
    assert declined.returncode == 1
    assert "Revoke" in declined.stderr and "ask first" in declined.stderr and declined.stdout == ""
    assert key_status(stack, key_id) == "active"
    no_answer = cli.run("keys", "revoke", key_id, input="")
    assert no_answer.returncode == 1 and key_status(stack, key_id) == "active"

    accepted = cli.run("keys", "revoke", key_id, input="y\n")
    assert accepted.returncode == 0
    assert accepted.stdout.startswith(f"Revoked {key_id}")  # the question went to stderr
    assert key_status(stack, key_id) == "revoked"
    again = cli.run("keys", "revoke", key_id, "--yes")
    assert again.returncode in (0, 1)  # idempotent or refused, never a traceback


def test_unknown_key_id_is_the_apis_404(cli: Cli) -> None:
    done = cli.run("keys", "show", "key_doesnotexist")
    assert done.returncode == 1 and "404" in done.stderr
    # A path in an id stays one segment: never another route.
    assert cli.run("keys", "show", "../account/webhook-secret").returncode == 1


# verify


def test_verify_reads_the_key_from_stdin(cli: Cli, stack: ProcessStack) -> None:
    key = str(cli.create("verify me")["key"])
    valid = cli.ok("keys", "verify", "--scope", "compute:read", input=key + "\n")
    assert "VALID" in valid.stdout and key not in valid.stdout
    denied = cli.run("keys", "verify", "--scope", "storage:write", "--json", input=key)
    assert denied.returncode == 1 and json.loads(denied.stdout)["code"] == "SCOPE_DENIED"

    # Never from argv: there is no argument to put it in.
    assert cli.run("keys", "verify", key).returncode == 2
    assert cli.run("keys", "verify", input="").returncode == 2
    assert cli.run("keys", "verify", input=f"{key}\n{key}\n").returncode == 2

    malformed = cli.run("keys", "verify", input="cnx_prod_notarealkey")
    assert malformed.returncode == 1 and "MALFORMED" in malformed.stdout


# account and audit


def test_webhook_secret_rotate(cli: Cli) -> None:
    shown = cli.ok("webhook-secret", "rotate")
    assert re.search(r"^    whsec_\S+$", shown.stdout, re.M) and "shown only once" in shown.stdout
    assert str(cli.json("webhook-secret", "rotate")["secret"]).startswith("whsec_")
    quiet = cli.ok("webhook-secret", "rotate", "--quiet").stdout
    assert re.fullmatch(r"whsec_\S+\n", quiet)


def test_audit(cli: Cli) -> None:
    key_id = str(cli.create("audited")["id"])
    cli.ok("keys", "revoke", key_id, "--yes")
    entries = cli.json("audit", "--key-id", key_id)["data"]
    assert [e["action"] for e in entries] == ["key.revoked", "key.created"]  # type: ignore[index, union-attr]
    table = cli.ok("audit", "--key-id", key_id, "--action", "key.revoked").stdout
    assert "key.revoked" in table and "key.created" not in table and key_id in table
    both = cli.json("audit", "--key-id", key_id, "--all", "--limit", "1")
    assert both["data"] == entries and both["next_cursor"] is None

    bad = cli.run("audit", "--action", "key.exploded")
    assert bad.returncode == 1 and "action" in bad.stderr
    assert cli.run("audit", "--since", "yesterday").returncode == 2


# profiles


def test_login_checks_the_key_saves_a_private_profile_and_logout_forgets_it(
    anonymous: Cli, stack: ProcessStack
) -> None:
    url = stack.url("issuer")
    not_logged_in = anonymous.run("keys", "list")
    assert not_logged_in.returncode == 1 and "cnx-keys login" in not_logged_in.stderr

    # A key the API does not accept is not saved.
    unknown = anonymous.run("login", "--api-url", url, input="cnx_prod_" + "A" * 36 + "\n")
    assert unknown.returncode == 1 and "nothing saved" in unknown.stderr
    assert not anonymous.config_file.exists()
    plain = str(stack.create_key(name="no admin scope", scopes=["compute:read"])["key"])
    refused = anonymous.run("login", "--api-url", url, input=plain)
    assert refused.returncode == 1 and "admin" in refused.stderr and not anonymous.config_file.exists()

    done = anonymous.run("login", "--api-url", url, input=stack.admin_key + "\n")
    assert done.returncode == 0, done.stderr
    assert stack.admin_key not in done.stdout + done.stderr
    path = anonymous.config_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stack.admin_key in path.read_text()

    assert "Bootstrap admin" in anonymous.ok("keys", "list", "--all").stdout
    missing = anonymous.run("keys", "list", "--profile", "staging")
    assert missing.returncode == 1 and "staging" in missing.stderr

    # A second profile, in a file named by --config (CNX_CONFIG_FILE works the same way).
    other = anonymous.home / "elsewhere.toml"
    anonymous.ok(
        "--config", str(other), "login", "--profile", "staging", "--api-url", url, input=stack.admin_key
    )
    assert stat.S_IMODE(other.stat().st_mode) == 0o600
    listed = anonymous.run("keys", "list", "--profile", "staging", env={"CNX_CONFIG_FILE": str(other)})
    assert listed.returncode == 0

    # The environment overrides the profile.
    wrong_url = anonymous.run("keys", "list", env={"CNX_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert wrong_url.returncode == 1 and "cannot reach" in wrong_url.stderr

    assert anonymous.json("logout")["removed"] is True
    assert stack.admin_key not in path.read_text()
    assert anonymous.run("keys", "list").returncode == 1
    assert anonymous.run("logout").returncode == 1


def test_a_connection_error_exits_1_without_a_traceback(cli: Cli) -> None:
    done = cli.run("keys", "list", env={"CNX_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach http://127.0.0.1:")
    assert done.stdout == ""


def test_not_the_management_api_is_a_clear_error(cli: Cli, stack: ProcessStack) -> None:
    done = cli.run("keys", "list", env={"CNX_API_URL": stack.url("demo")})
    assert done.returncode == 1 and done.stderr.startswith("error: ")


# terminal behaviour, help, completion, the stack's own commands


def run_on_a_terminal(cli: Cli, *args: str) -> str:
    """Run with stdout and stderr on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    env = {**cli.env, "TERM": "xterm-256color", "COLUMNS": "200"}
    process = subprocess.Popen(
        [str(CNX_KEYS), *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=10)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_colours_only_on_a_terminal(cli: Cli) -> None:
    cli.create("colourful")
    on_terminal = run_on_a_terminal(cli, "keys", "list")
    assert "\x1b[" in on_terminal and "colourful" in on_terminal
    assert "\x1b[" not in cli.ok("keys", "list").stdout  # Cli.run checks this for every command


@pytest.mark.parametrize(
    "command",
    [
        ["keys", "create"], ["keys", "list"], ["keys", "show"], ["keys", "rotate"], ["keys", "revoke"],
        ["keys", "renew"], ["keys", "update"], ["keys", "delete"], ["keys", "verify"],
        ["webhook-secret", "rotate"], ["audit"], ["login"], ["logout"],
    ],
)  # fmt: skip
def test_every_command_has_help_with_an_example_and_json(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (the same Typer app the console script runs): rendering 13 help pages in 13 fresh
    # interpreters costs seconds and checks nothing more.
    assert cli_main([*command, "--help"]) == 0
    shown = capsys.readouterr().out
    assert "Example" in shown and "cnx-keys" in shown, command
    assert "--json" in shown, command


def test_help_and_completion_of_the_installed_script(cli: Cli) -> None:
    assert "keys" in cli.ok("--help").stdout
    script = cli.ok("--show-completion", "bash", env={"SHELL": "/bin/bash"}).stdout
    assert "_CNX_KEYS_COMPLETE" in script
    completed = cli.run(
        env={"_CNX_KEYS_COMPLETE": "complete_bash", "COMP_WORDS": "cnx-keys keys r", "COMP_CWORD": "2"}
    )
    assert set(completed.stdout.split()) == {"rotate", "revoke", "renew"}


def test_the_stack_commands_are_still_there(cli: Cli) -> None:
    assert cli.ok("asyncapi").stdout == (ROOT / "docs" / "asyncapi.json").read_text()
    for command in ("up", "migrate"):
        assert "Example" in cli.ok(command, "--help").stdout
    assert cli.ok("--version").stdout.startswith("cnx-keys ")
