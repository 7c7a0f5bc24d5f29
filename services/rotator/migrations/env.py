"""Alembic environment of the rotator's store."""

import services.rotator.store  # noqa: F401 - registers the rotator's tables on SQLModel.metadata
from shared.migration_env import run

run("rotator")
