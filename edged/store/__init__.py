"""The SQLite store: one file, one group-committing writer, reader connections."""

from edged.store.database import Database, Job

__all__ = ["Database", "Job"]
