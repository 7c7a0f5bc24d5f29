"""Alembic environment of the validator's store."""

import services.validator.store  # noqa: F401 - registers the validator's tables on SQLModel.metadata
from shared.migration_env import run

run("validator")
