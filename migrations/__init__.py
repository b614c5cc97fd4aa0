"""Alembic migrations: the system schema and the demo domain."""
