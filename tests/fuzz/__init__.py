"""Fuzzing: schemathesis against the services' own OpenAPI documents, on a real stack (runner.py)."""
