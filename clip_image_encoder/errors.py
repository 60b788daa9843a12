"""Every error the encoder reports, in one place, each class named for what went wrong.

Two families matter to a caller:

- `EmbeddingError`: one input (an image or a text) got no embedding. The pipeline returns it in that input's place
  and carries on with the rest. Its message is written for the client, and its ``reason``
  names the class of failure for counters and logs.
- `UserError`: the whole call cannot go on because of what the user gave it, and the user can fix it: a bad
  option (`OptionError`), a model that cannot be loaded (`ModelNotFoundError`), embeddings that do not
  belong in an index (`IndexMismatchError`), training inputs that cannot be used (`TrainingError`), a flow
  that cannot be deployed (`DeploymentError`), an optional part that is not installed (`MissingExtraError`).
  These are raised; the command line catches them once and prints the message (exit status 2), never a
  traceback.
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


class OverloadedError(RuntimeError):
    """The service holds as much queued work as it agreed to (``max_queued_documents``): retry later.

    Raised for the whole request, at once, before any of its work is queued, so the client can retry it
    elsewhere or later; the requests already queued are answered.
    """


class UserError(Exception):
    """The call cannot go on because of what the user gave it; the message says what to change."""


class OptionError(UserError, ValueError):
    """An option (at start or per request) has a wrong name, type or value; the message names it."""


class ModelNotFoundError(UserError, RuntimeError):
    """The model could not be loaded from the hub, the cache or a local folder, or is of no supported kind."""


class IndexMismatchError(UserError, ValueError):
    """Embeddings to add or to search with come from another model, or have another size, than the index holds."""


class TrainingError(UserError, ValueError):
    """Training cannot start or go on because of its inputs (data, output folder, checkpoint): the user can fix it."""


class DeploymentError(UserError, ValueError):
    """The flow or the output folder cannot make deployment files; the message says what to change."""


class MissingExtraError(UserError, ImportError):
    """A command needs an optional part of the package that is not installed; the message names the extra."""
