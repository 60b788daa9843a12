"""Every error the encoder reports, in one place, each class named for what went wrong.

Two families matter to a caller:

- `EmbeddingError`: one input (an image or a text) got no embedding. The pipeline returns it in that input's place
  and carries on with the rest. Its message is written for the client, and its ``reason``
  names the class of failure for counters and logs.
- Errors of the whole call: a bad option (`OptionError`), a model that cannot be loaded
  (`ModelNotFoundError`), embeddings that do not belong in an index (`IndexMismatchError`), or training
  inputs that cannot be used (`TrainingError`). These are raised.
"""

from __future__ import annotations


class EmbeddingError(Exception):
    """One input got no embedding; the message says why, for the client."""

    reason = "failed"
    """A short, stable name of the failure class (for metrics and logs)."""


class ImageInputError(EmbeddingError, ValueError):
    """One input cannot become an image: the client can fix it by sending something else."""

    reason = "invalid_input"


class NoImageError(ImageInputError):
    """The Document carries no image at all."""

    reason = "no_image"


class UndecodableImageError(ImageInputError):
    """The bytes are not an image that Pillow can decode."""

    reason = "undecodable"


class ImageTooLargeError(ImageInputError):
    """The image declares more pixels (or bytes) than the service agrees to decode."""

    reason = "too_large"


class UriRefusedError(ImageInputError):
    """The uri is of a kind, or points to a place, that the operator does not allow."""

    reason = "refused_uri"


class UriUnreadableError(ImageInputError):
    """The uri is allowed but its bytes could not be read (no such file, network failure)."""

    reason = "unreadable_uri"


class TextInputError(EmbeddingError, ValueError):
    """One text query cannot be embedded (none, empty, whitespace only, not a string): the client can fix it."""

    reason = "invalid_text"


class ModelError(EmbeddingError, RuntimeError):
    """The model failed on the batch that held this input: not the client's fault."""

    reason = "model"


class OptionError(ValueError):
    """An option (at start or per request) has a wrong name, type or value; the message names it."""


class ModelNotFoundError(RuntimeError):
    """The model could not be loaded from the hub, the cache or a local folder."""


class IndexMismatchError(ValueError):
    """Embeddings to add or to search with come from another model, or have another size, than the index holds."""


class TrainingError(ValueError):
    """Training cannot start or go on because of its inputs (data, output folder, checkpoint): the user can fix it."""
