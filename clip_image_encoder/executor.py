"""The Jina Executor: maps Documents to image sources, runs the pipeline, writes results back.

It orchestrates only: options, decoding, preprocessing and the model live in their own modules.
"""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import asyncio
import contextlib
import inspect
from typing import Any

import numpy as np
import torch
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.documents import ImageDocument
from clip_image_encoder.errors import EmbeddingError
from clip_image_encoder.metrics import ServiceMetrics
from clip_image_encoder.options import OPTIONS, EncoderOptions
from clip_image_encoder.pipeline import ImageEncoder, ImageItem
from clip_image_encoder.shutdown import serve_gracefully
from clip_image_encoder.sources import ImageSource


def _with_option_keywords(init: Any) -> inspect.Signature:
    """The constructor's signature as Jina (which checks ``with:`` against it) and ``help()`` read it:
    Jina's own arguments, then every option of `EncoderOptions` as a keyword with its default."""
    jina_arguments = [p for p in inspect.signature(init).parameters.values() if p.kind != p.VAR_KEYWORD]
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=option.type)
        for name, option in OPTIONS.items()
    ]
    return inspect.Signature([*jina_arguments, *options])


class CLIPImageEncoder(Executor):
    """Embeds the image of each Document with a Hugging Face CLIP vision model (or another registered backbone).

    Its keyword arguments are the options of `EncoderOptions` (``clip_image_encoder/options.py``),
    validated at start; the per-request ones can also be sent as ``parameters``.
    """

    def __init__(
        self,
        metas: dict | None = None,
        requests: dict | None = None,
        runtime_args: dict | None = None,
        workspace: str | None = None,
        dynamic_batching: dict | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            metas=metas,
            requests=requests,
            runtime_args=runtime_args,
            workspace=workspace,
            dynamic_batching=dynamic_batching,
        )
        self.options = EncoderOptions.from_mapping(options)
        self.encoder = ImageEncoder.from_options(self.options, replicas=getattr(self.runtime_args, "replicas", 1))
        # Jina's registry exists with --monitoring, its tracer with --tracing; the model is known once loaded.
        self.encoder.metrics = ServiceMetrics(
            getattr(self.runtime_args, "metrics_registry", None), self.tracer, _model_info(self.options, self.encoder)
        )
        # Without overlap (cpu), concurrent requests only contend: take them one at a time, as Jina does
        # for sync endpoints (benchmarks/RESULTS_SMALL.md).
        self._one_request_at_a_time = contextlib.nullcontext() if self.encoder.overlaps else asyncio.Lock()
        self._ignored_parameters: set[str] = set()
        self._in_flight = serve_gracefully(self.options.stop_timeout_s)

    __init__.__signature__ = _with_option_keywords(__init__)

    @requests
    async def encode(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """Write ``embedding`` (or ``error``) on every Document, keeping order and ids.

        Async so that, on cuda, the next request decodes while the model runs; on cpu, where
        overlapping only makes threads contend for the cores, requests are taken one at a time.
        A bad parameter fails this request alone, with a message that names it. On a stop signal,
        requests in flight are answered first (`shutdown`).
        """
        options = self._request_options(parameters or {})
        async with self._in_flight.track(), self._one_request_at_a_time:
            with self.monitor("encode_seconds", "Time to embed the Documents of one request"):
                await asyncio.to_thread(self._encode_documents, docs, options)
        return docs

    def _request_options(self, parameters: dict) -> EncoderOptions:
        options, ignored = self.options.for_request(parameters)
        new = set(ignored) - self._ignored_parameters
        if new:  # other Executors' parameters reach every Executor of a Flow: say so once per name
            self.logger.warning(f"ignoring parameters that are not options of this encoder: {sorted(new)}")
            self._ignored_parameters |= new
        return options

    def _encode_documents(self, docs: DocList[ImageDocument], options: EncoderOptions) -> None:
        todo = [(index, doc) for index, doc in enumerate(docs) if doc.embedding is None or options.overwrite_embeddings]
        results = self.encoder.encode((_image_item(doc, options.rotation) for _, doc in todo), options)
        for (index, doc), result in zip(todo, results, strict=True):
            if isinstance(result, EmbeddingError):
                doc.embedding = None
                doc.error = f"doc {index} (id {doc.id}): {result}"
                self.logger.warning(doc.error)
            else:
                doc.embedding = result
                doc.error = None
        if not options.keep_image_data:
            for doc in docs:
                doc.bytes_ = None
                doc.tensor = None

    def close(self) -> None:
        self.encoder.close()
        super().close()


def _model_info(options: EncoderOptions, encoder: ImageEncoder) -> dict[str, str]:
    model = encoder.model
    return {
        "model": options.pretrained_model_name_or_path,
        "backend": options.backend,
        "device": str(model.device),
        "dtype": "int8" if options.dtype == "int8" else str(model.dtype).removeprefix("torch."),
        "embedding_dim": str(model.embedding_dim),
    }


def _image_item(doc: ImageDocument, default_rotation: int) -> ImageItem:
    roi = tuple(doc.roi) if doc.roi is not None else None
    rotation = default_rotation if doc.rotation is None else doc.rotation
    return ImageItem(_image_source(doc), roi=roi, rotation=rotation)


def _image_source(doc: ImageDocument) -> ImageSource | None:
    """The image a Document carries: a decoded tensor first, then bytes, then the uri."""
    if doc.tensor is not None:
        tensor = doc.tensor
        return tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    if doc.bytes_ is not None:
        return doc.bytes_
    if doc.url is not None:
        return doc.url
    return None


__all__ = ["CLIPImageEncoder"]
