"""Helpers the test tiers share: processes, databases. Fixtures live in tests/conftest.py."""
