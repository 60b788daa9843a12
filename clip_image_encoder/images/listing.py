"""Which files of a folder are the images to embed: every file, sorted, hidden files and folders left out.

The folder commands, training and the Ray engine's object-storage listing all take this one rule, so that
every engine and command sees the same files. Files that are not images are kept here and fail later,
each with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def is_hidden(relative_parts: Sequence[str]) -> bool:
    """Whether a path, given as its parts relative to the listed folder, is or lies in a hidden file or folder."""
    return any(part.startswith(".") for part in relative_parts)


def list_images(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, skipping hidden files and folders."""
    return sorted(
        path for path in folder.rglob("*") if path.is_file() and not is_hidden(path.relative_to(folder).parts)
    )
