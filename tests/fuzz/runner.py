"""schemathesis against a real stack: a nats-server, the issuer and the validator as processes.

`make test-fuzz` (python -m tests.fuzz) runs it long; tests/e2e/test_fuzz.py runs it short in `make test`.
Each service is fuzzed through the OpenAPI document it serves itself (issuer and validator each at
/openapi.json), every phase (examples, coverage, fuzzing, stateful: create -> get/patch/revoke/...
through the issuer document's links), authenticated with the stack's bootstrap admin key (the management
API's own rate limit off, CNX_MANAGEMENT_RATE_LIMIT=0, so the run is not throttled into 429s).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.stack import ProcessStack, stack_with_own_nats

# What every response must satisfy: never a 5xx; a status, content type, headers and body the document
# names for that operation; data the schema forbids refused with a 4xx (strict types, enums, bounds).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")
SCHEMATHESIS = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")


@dataclass
class FuzzResult:
    service: str
    command: list[str]
    returncode: int
    output: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    @property
    def cases(self) -> int | None:
        """The number of test cases schemathesis reports it generated (None if it printed none)."""
        found = re.search(r"Test cases:\s*\n?\s*(\d+) generated", self.output) or re.search(
            r"(\d+) generated", self.output
        )
        return int(found.group(1)) if found else None


def write_scanning_keys(path: Path) -> Path:
    """A GitHub-format key set with one fresh P-256 key, so the secret scanning endpoint is configured
    (unconfigured, it answers every report 503) and the fuzzer meets its signature checks."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    entry = {"key_identifier": "fuzz-key", "key": pem.decode(), "is_current": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"public_keys": [entry]}))
    return path


@contextmanager
def fuzz_stack(root: Path) -> Iterator[ProcessStack]:
    """A nats-server, the issuer and the validator on free ports, state under `root`."""
    with stack_with_own_nats(
        root,
        ["issuer", "validator"],
        CNX_MANAGEMENT_RATE_LIMIT="0",
        CNX_LOG_LEVEL="WARNING",
        CNX_SECRET_SCANNING_KEYS=str(write_scanning_keys(root / "github-keys.json")),
    ) as stack:
        yield stack


def run_schemathesis(
    service: str,
    base_url: str,
    *,
    headers: dict[str, str],
    max_examples: int,
    report_dir: Path,
    seed: int | None = None,
    max_time: float | None = None,
) -> FuzzResult:
    """`st run <base_url>/openapi.json` with CHECKS and every phase; the output is kept whole."""
    report_dir = report_dir.resolve()
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{base_url}/openapi.json",
        "--url",
        base_url,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        ",".join(PHASES),
        "--max-examples",
        str(max_examples),
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir / service),
        "--generation-database",
        "none",
        "--warnings",
        "off",
    ]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    if seed is not None:
        command += ["--seed", str(seed)]
    if max_time is not None:
        command += ["--max-time", str(max_time)]
    started = time.monotonic()
    # In the report directory: schemathesis keeps its crash cache (requests, headers included) in the
    # working directory's .schemathesis/, which must not land in the work tree.
    report_dir.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=report_dir)
    return FuzzResult(
        service,
        [
            part if not part.startswith("Authorization:") else "Authorization: Bearer <admin key>"
            for part in command
        ],
        completed.returncode,
        completed.stdout + completed.stderr,
        time.monotonic() - started,
    )


def fuzz(
    stack: ProcessStack, *, max_examples: int, report_dir: Path, seed: int | None = None
) -> list[FuzzResult]:
    """The issuer's document (as the bootstrap admin), then the validator's (its forward-auth takes the
    admin key as any other: it is one of the keys it knows)."""
    admin = stack.admin()
    return [
        run_schemathesis(
            service,
            stack.url(service),
            headers=admin,
            max_examples=max_examples,
            report_dir=report_dir,
            seed=seed,
        )
        for service in ("issuer", "validator")
    ]
