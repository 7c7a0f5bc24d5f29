"""`cnx-keys bootstrap-admin`: the first admin key of a cluster, to a file or a terminal, never a log."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from shared.tokens import TOKEN_PATTERN


def cnx_keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CNX_DATA_DIR": str(tmp_path), "CNX_DEPLOYMENT": "local"}
    env.pop("CNX_ISSUER_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_first_admin_key_goes_to_a_0600_file_once_and_never_to_a_piped_stdout(tmp_path: Path) -> None:
    assert cnx_keys(tmp_path, "migrate", "issuer").returncode == 0
    piped = cnx_keys(tmp_path, "bootstrap-admin")
    assert piped.returncode == 2 and "not a terminal" in piped.stderr
    assert "cnx_" not in piped.stdout + piped.stderr

    out = tmp_path / "admin-key"
    made = cnx_keys(tmp_path, "bootstrap-admin", "--out", str(out))
    assert made.returncode == 0, made.stderr
    secret = out.read_text().strip()
    assert TOKEN_PATTERN.fullmatch(secret), "a real key"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert secret not in made.stdout + made.stderr

    again = cnx_keys(tmp_path, "bootstrap-admin", "--out", str(tmp_path / "second"))
    assert again.returncode == 1 and "already has keys" in again.stderr
    assert not (tmp_path / "second").exists()
