"""Text queries: the text tower of the checkpoint whose vision tower embeds the images.

A text query becomes a vector in the image embeddings' space only through the text tower trained
with that vision tower, so the tower is read from the same checkpoint (hub name or
``save_pretrained`` folder) as the image encoder's: CLIP's text model with its projection
(``text_embeds``), or SigLIP's text model (its pooled output is the embedding). Which one is the
checkpoint's ``model_type``. Each text is tokenised as the model's own processor does it, truncated
at the model's context length; an empty text gets a `TextInputError` of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipTextModel,
)

from clip_image_encoder.encoding.batching import batched
from clip_image_encoder.encoding.outputs import OutputOptions, apply_output_options
from clip_image_encoder.errors import EmbeddingError, ModelError, ModelNotFoundError, TextInputError
from clip_image_encoder.models.backbones import model_type_of, packaged_backbones
from clip_image_encoder.models.devices import resolve_device
from clip_image_encoder.models.identity import DEFAULT_MODEL, model_source

logger = logging.getLogger(__name__)

TextResult = np.ndarray | EmbeddingError
"""``(D,)`` float32 embedding of one text, or why it has none."""


@dataclass(frozen=True)
class TextTower:
    """How one family's text tower is loaded, fed and read out."""

    name: str
    model_class: type[PreTrainedModel]
    read_embedding: Callable[[Any], torch.Tensor]
    """Model output -> ``(N, D)`` embeddings."""
    padding: str
    """``longest`` (CLIP: padding is masked out) or ``max_length`` (SigLIP: trained on padded inputs and
    pooled at the last position, so its processor always pads to the context length)."""
    model_types: tuple[str, ...]
    """Hugging Face config ``model_type`` values whose checkpoints hold this tower."""


TEXT_TOWERS: tuple[TextTower, ...] = (
    TextTower("clip", CLIPTextModelWithProjection, lambda out: out.text_embeds, "longest", ("clip", "clip_text_model")),
    TextTower("siglip", SiglipTextModel, lambda out: out.pooler_output, "max_length", ("siglip", "siglip_text_model")),
)


def text_tower_for(model_type: str, name_or_path: str) -> TextTower:
    for tower in TEXT_TOWERS:
        if model_type in tower.model_types:
            return tower
    supported = [model_type for tower in TEXT_TOWERS for model_type in tower.model_types]
    raise ModelNotFoundError(
        f"model {name_or_path!r} has model_type {model_type!r}, which has no text tower this encoder loads; "
        f"text queries need a checkpoint of type {', '.join(supported)}"
    )


def has_text_tower(name_or_path: str, **hub_kwargs: Any) -> bool:
    """Whether the checkpoint holds a text tower this encoder loads (only its config is read).

    A vision-only checkpoint (``clip_vision_model``) or a packaged image backbone has none; nor has a
    checkpoint whose config cannot be read, which the image encoder will then report.
    """
    if name_or_path in packaged_backbones():
        return False
    try:
        model_type = model_type_of(name_or_path, hub_kwargs)
    except ModelNotFoundError:
        return False
    return any(model_type in tower.model_types for tower in TEXT_TOWERS)


class TextEncoder:
    """A text tower and its tokenizer, on one device, in float32, in inference mode."""

    def __init__(
        self, module: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tower: TextTower, device: torch.device
    ) -> None:
        self.module = module.eval().to(device)
        self.tokenizer = tokenizer
        self.tower = tower
        self.device = device
        self.context_length: int = module.config.max_position_embeddings
        """Tokens per text, special tokens included; longer texts are truncated."""

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "auto", **hub_kwargs: Any) -> TextEncoder:
        """Load the text tower and tokenizer of a hub name or ``save_pretrained`` folder; never remote code."""
        if name_or_path in packaged_backbones():
            raise ModelNotFoundError(
                f"{name_or_path!r} is an image backbone with no text tower: text queries need a CLIP or SigLIP "
                "checkpoint, whose two towers share one space"
            )
        source = model_source(name_or_path)
        torch_device = resolve_device(device)
        tower = text_tower_for(model_type_of(name_or_path, hub_kwargs), name_or_path)
        try:
            module = tower.model_class.from_pretrained(
                source, dtype=torch.float32, use_safetensors=True, trust_remote_code=False, **hub_kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **hub_kwargs)
        except OSError as exc:
            raise ModelNotFoundError(
                f"text model {name_or_path!r} could not be loaded ({exc}). It needs the checkpoint's weights "
                "(safetensors) and its tokenizer files; offline, pass a local save_pretrained folder or point "
                "HF_HOME at a cache that holds the model."
            ) from exc
        logger.info("loaded the %s text tower of %s on %s", tower.name, name_or_path, torch_device)
        return cls(module, tokenizer, tower, torch_device)

    @property
    def embedding_dim(self) -> int:
        config = self.module.config
        return config.projection_dim if self.tower.name == "clip" else config.projection_size

    def encode(
        self, texts: Sequence[object], batch_size: int = 32, output: OutputOptions | None = None
    ) -> list[TextResult]:
        """One result per text, in order: an embedding in the asked form, or the error of that text alone."""
        output = output or OutputOptions()
        checked = [_check_text(text) for text in texts]
        results: list[TextResult | None] = [text if isinstance(text, EmbeddingError) else None for text in checked]
        valid = [index for index, text in enumerate(checked) if isinstance(text, str)]
        for batch in batched(valid, batch_size):
            try:
                embeddings = apply_output_options(self.embed([checked[index] for index in batch]), output)
            except (RuntimeError, ValueError) as exc:  # the model or tokenizer failed: not the client's fault
                logger.exception("text batch of %d failed", len(batch))
                embeddings = [ModelError(f"the text model failed on this batch ({exc})")] * len(batch)
            for index, embedding in zip(batch, embeddings, strict=True):
                results[index] = embedding
        return results

    def embed(self, texts: list[str]) -> np.ndarray:
        """Non-empty strings -> ``(N, D)`` float32 raw model output."""
        inputs = self.tokenizer(
            texts,
            padding=self.tower.padding,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            output = self.module(**{name: tensor.to(self.device) for name, tensor in inputs.items()})
            return self.tower.read_embedding(output).float().cpu().numpy()


def _check_text(text: object) -> str | TextInputError:
    if text is None:
        return TextInputError("no text: set the Document's text to the query")
    if not isinstance(text, str):
        return TextInputError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        return TextInputError(f"text {text!r} is empty or only whitespace: send words to search for")
    return text
