"""Years on a small box: retention, file size, backups, archive, replica."""
