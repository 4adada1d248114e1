"""The SQLite store: one file, one group-committing writer, reader connections."""

from edged.store.database import Database, Job, StoreFull

__all__ = ["Database", "Job", "StoreFull"]
