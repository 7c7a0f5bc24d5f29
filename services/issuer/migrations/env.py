"""Alembic environment of the issuer's store."""

import services.issuer.store  # noqa: F401 - registers the issuer's tables on SQLModel.metadata
from shared.migration_env import run

run("issuer")
