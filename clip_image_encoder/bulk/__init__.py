"""Bulk embedding of folders into files: the run, the file formats, the Ray engine."""
