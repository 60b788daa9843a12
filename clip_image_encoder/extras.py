"""Optional parts of the package, installed as extras (``pip install clip-image-encoder[train]``).

The serving image installs none of them; a command that needs one says which extra to install
(`MissingExtraError`, exit status 2) instead of failing with an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from clip_image_encoder.errors import MissingExtraError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or say that ``purpose`` needs the ``extra`` installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: install the {extra} extra: "
            f"pip install 'clip-image-encoder[{extra}]'"
        ) from None
