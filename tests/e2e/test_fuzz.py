"""The short schemathesis run of `make test-fuzz` (tests/fuzz), in `make test` and so in `.ci/run`.

25 examples per operation and phase against the issuer's and the validator's own /openapi.json, on a
real stack (nats-server, both services as processes): no 5xx; statuses, content types, headers and
bodies as documented; data the schema forbids refused. A fixed seed keeps CI reproducible; `make
test-fuzz` runs 300 examples with a new seed each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import ProcessStack
from tests.fuzz.runner import fuzz, fuzz_stack

EXAMPLES = 25
SEED = 18


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    with fuzz_stack(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def test_schemathesis_finds_nothing_on_the_issuer_and_the_validator(
    stack: ProcessStack, tmp_path: Path
) -> None:
    results = fuzz(stack, max_examples=EXAMPLES, report_dir=tmp_path, seed=SEED)
    for result in results:
        print(f"{result.service}: {result.cases} test cases in {result.seconds:.0f}s")
        assert result.passed, (
            f"schemathesis found failures on the {result.service}:\n{' '.join(result.command)}\n"
            f"{result.output}\n--- service logs ---\n{stack.logs()[-8000:]}"
        )
        assert result.cases and result.cases > 50, result.output
