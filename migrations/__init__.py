"""Alembic migrations of the planner's store (a package so that an installed planner can find them)."""
