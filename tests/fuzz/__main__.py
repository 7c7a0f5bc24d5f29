"""`make test-fuzz`: python -m tests.fuzz [--examples N] [--seed S] [--report-dir DIR].

Starts a nats-server, the issuer and the validator on free ports and runs schemathesis against each
one's /openapi.json (runner.py says which checks and phases). Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .runner import fuzz, fuzz_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=300, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None, help="schemathesis seed (default: random)")
    parser.add_argument("--report-dir", type=Path, default=Path(".data/fuzz"), help="JUnit reports")
    args = parser.parse_args(argv)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnx-fuzz-") as root, fuzz_stack(Path(root)) as stack:
        results = fuzz(stack, max_examples=args.examples, report_dir=args.report_dir, seed=args.seed)
        failed = False
        for result in results:
            print(f"===== {result.service}: {' '.join(result.command)}")
            print(result.output)
            print(
                f"===== {result.service}: {'passed' if result.passed else 'FAILED'}, "
                f"{result.cases} test cases in {result.seconds:.0f}s"
            )
            failed |= not result.passed
        if failed:
            print(f"service logs:\n{stack.logs()[-20000:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
