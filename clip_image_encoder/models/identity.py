"""Which model a name means: the default, where ``from_pretrained`` finds a name or folder, and the identity
an index records for its embeddings. Light on purpose: the options and ``--help`` read it without torch."""

from __future__ import annotations

import os
from pathlib import Path

from clip_image_encoder.errors import ModelNotFoundError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DUPLICATES_MODEL = "efficientnet-lite0-copy"
"""``duplicates``' default: the copy-detection read-out of the packaged weights (benchmarks/DUPLICATES.md)."""


def model_source(name_or_path: str) -> str:
    """What ``from_pretrained`` is given: a readable local folder's path, or the hub name as it is.

    A path-like name that is no folder fails here, not as a confusing hub lookup; so does an unreadable file.
    """
    folder = Path(name_or_path).expanduser()
    if (folder.is_absolute() or name_or_path.startswith(".")) and not folder.is_dir():
        raise ModelNotFoundError(f"model folder {name_or_path!r} does not exist")
    if not folder.is_dir():
        return name_or_path
    _check_readable(folder)
    return str(folder)


def model_identity(name_or_path: str) -> str:
    """What an index records as the model of its embeddings, and a query must match: the resolved folder,
    or the hub (or packaged) name. The image and text towers of one checkpoint have the same identity."""
    folder = Path(name_or_path).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name_or_path


def _check_readable(folder: Path) -> None:
    """Say "permission" when it is one: transformers reports an unreadable weights file as a missing one."""
    for path in folder.iterdir():
        if path.is_file() and not os.access(path, os.R_OK):
            raise ModelNotFoundError(
                f"model file {path} is not readable by this user (uid {os.getuid()}): permission denied. "
                "save_pretrained writes weights with mode 0600; make the folder readable (chmod -R a+rX) "
                "or run as the files' owner (docker run --user)."
            )
