"""Alembic environment of the notifier's store."""

import services.notifier.store  # noqa: F401 - registers the notifier's tables on SQLModel.metadata
from shared.migration_env import run

run("notifier")
