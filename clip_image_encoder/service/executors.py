"""The Jina Executors: map Documents to image sources (or text queries), run the encoder, write results back.

They orchestrate only: options, decoding, preprocessing, tokenising and the models live in their own modules.
"""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import asyncio
import inspect
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.config.options import OPTIONS, TEXT_ENCODER_OPTIONS, EncoderOptions
from clip_image_encoder.encoding.images import EncodeResult, ImageEncoder, ImageItem
from clip_image_encoder.encoding.outputs import OutputOptions
from clip_image_encoder.encoding.texts import TextEncoder
from clip_image_encoder.errors import EmbeddingError, OptionError
from clip_image_encoder.images.uris import ImageSource
from clip_image_encoder.models.identity import model_identity
from clip_image_encoder.service.documents import ImageDocument, TextDocument
from clip_image_encoder.service.metrics import ServiceMetrics
from clip_image_encoder.service.shutdown import serve_gracefully


def _with_option_keywords(init: Any, names: tuple[str, ...] = tuple(OPTIONS)) -> inspect.Signature:
    """The constructor's signature as Jina (which checks ``with:`` against it) and ``help()`` read it:
    Jina's own arguments, then each named option of `EncoderOptions` as a keyword with its default."""
    jina_arguments = [p for p in inspect.signature(init).parameters.values() if p.kind != p.VAR_KEYWORD]
    options = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=OPTIONS[name].default, annotation=OPTIONS[name].type
        )
        for name in names
    ]
    return inspect.Signature([*jina_arguments, *options])


class _OptionsExecutor(Executor):
    """What both encoders share: Jina's constructor arguments, then options of `EncoderOptions` (only those in
    ``option_names``), per-request parameters, a graceful stop, and one result written back per Document."""

    option_names: tuple[str, ...] = tuple(OPTIONS)

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
        not_ours = (set(options) & set(OPTIONS)) - set(self.option_names)
        if not_ours:
            raise OptionError(
                f"option(s) {sorted(not_ours)} do not apply to {type(self).__name__}; its options are: "
                f"{', '.join(self.option_names)}"
            )
        self.options = EncoderOptions.from_mapping(options)  # refuses names that are no option at all
        self.model_identity = model_identity(self.options.pretrained_model_name_or_path)
        self._ignored_parameters: set[str] = set()
        self._in_flight = serve_gracefully(self.options.stop_timeout_s)

    def _request_options(self, parameters: dict) -> EncoderOptions:
        ours = {name: value for name, value in parameters.items() if name in self.option_names}
        options, ignored = self.options.for_request(ours)
        new = ({*ignored, *(set(parameters) - set(ours))} - self._ignored_parameters) - {
            name for name in parameters if name.startswith("__")
        }
        if new:  # other Executors' parameters reach every Executor of a Flow: say so once per name
            self.logger.warning(f"ignoring parameters that are not options of this encoder: {sorted(new)}")
            self._ignored_parameters |= new
        return options

    def _write_results(self, indexed_docs: Iterable[tuple[int, Any]], results: Iterable[EncodeResult]) -> None:
        """Each Document gets its embedding and the model that made it, or an ``error`` naming it (position and
        id) and why."""
        for (index, doc), result in zip(indexed_docs, results, strict=True):
            if isinstance(result, EmbeddingError):
                doc.embedding, doc.model = None, None
                doc.error = f"doc {index} (id {doc.id}): {result}"
                self.logger.warning(doc.error)
            else:
                doc.embedding, doc.model = result, self.model_identity
                doc.error = None


class CLIPImageEncoder(_OptionsExecutor):
    """Embeds the image of each Document with a Hugging Face CLIP vision model (or another registered backbone).

    Its keyword arguments are the options of `EncoderOptions` (``clip_image_encoder/config/options.py``),
    validated at start; the per-request ones can also be sent as ``parameters``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = ImageEncoder.from_options(self.options, replicas=getattr(self.runtime_args, "replicas", 1))
        # Jina's registry exists with --monitoring, its tracer with --tracing; the model is known once loaded.
        self.encoder.metrics = ServiceMetrics(
            getattr(self.runtime_args, "metrics_registry", None), self.tracer, _model_info(self.options, self.encoder)
        )
        # Without overlap (cpu), concurrent requests only contend: take them one at a time, as Jina does
        # for sync endpoints (benchmarks/RESULTS_SMALL.md).
        self._one_at_a_time = None if self.encoder.overlaps else asyncio.Lock()

    __init__.__signature__ = _with_option_keywords(_OptionsExecutor.__init__)

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
        with self.monitor("encode_seconds", "Time to embed the Documents of one request"):
            await self._in_flight.answer(self._encode_documents, docs, options, one_at_a_time=self._one_at_a_time)
        return docs

    def _encode_documents(self, docs: DocList[ImageDocument], options: EncoderOptions) -> None:
        todo = [
            (index, doc)
            for index, doc in enumerate(docs)
            if (doc.embedding is None or options.overwrite_embeddings) and not _is_text_query(doc)
        ]
        self._write_results(todo, self.encoder.encode((_image_item(doc, options.rotation) for _, doc in todo), options))
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


def _is_text_query(doc: ImageDocument) -> bool:
    """A text and no image: the search Flow's text encoder embeds it, so it is no missing image here."""
    return doc.text is not None and _image_source(doc) is None


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


class CLIPTextEncoder(_OptionsExecutor):
    """Embeds the ``text`` of each Document with the text tower of a CLIP or SigLIP checkpoint.

    With the checkpoint of the `CLIPImageEncoder` it serves, text and image embeddings share one
    space (and dimension): a text query can be compared with indexed images. Its keyword arguments
    are the options named in `TEXT_ENCODER_OPTIONS`, declared and validated as the image encoder's
    are; the rest of `EncoderOptions` is about images and is refused here.
    """

    option_names = TEXT_ENCODER_OPTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = TextEncoder.from_pretrained(self.options.pretrained_model_name_or_path, self.options.device)
        # One model, called from worker threads: one request at a time keeps them from contending.
        self._one_at_a_time = asyncio.Lock()

    __init__.__signature__ = _with_option_keywords(_OptionsExecutor.__init__, TEXT_ENCODER_OPTIONS)

    @requests
    async def encode(
        self, docs: DocList[TextDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[TextDocument]:
        """Write ``embedding`` (or ``error``) on every Document, keeping order and ids.

        A Document with no text, an empty one or one of only whitespace gets an ``error`` of its
        own; the others are embedded. A bad parameter fails this request alone.
        """
        options = self._request_options(parameters or {})
        with self.monitor("encode_seconds", "Time to embed the Documents of one request"):
            await self._in_flight.answer(
                self._encode_documents, list(enumerate(docs)), options, one_at_a_time=self._one_at_a_time
            )
        return docs

    async def encode_text_queries(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """In the search Flow (after the image encoder, bound by `service.flow.TEXT_ENCODER`'s ``uses_requests``):
        embed the Documents that are a text query; leave the others as they are."""
        options = self._request_options(parameters or {})
        queries = [(index, doc) for index, doc in enumerate(docs) if _is_pending_text_query(doc)]
        if queries:
            await self._in_flight.answer(self._encode_documents, queries, options, one_at_a_time=self._one_at_a_time)
        return docs

    async def pass_images_on(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """In the search Flow, ``/index`` carries images for the indexer: nothing for a text tower to do."""
        return docs

    def _encode_documents(self, indexed_docs: list[tuple[int, Any]], options: EncoderOptions) -> None:
        results = self.encoder.encode(
            [doc.text for _, doc in indexed_docs], options.batch_size, OutputOptions.from_options(options)
        )
        self._write_results(indexed_docs, results)


def _is_pending_text_query(doc: ImageDocument) -> bool:
    """A text query the image encoder left alone: it carries text, and neither an embedding nor an error."""
    return doc.text is not None and doc.embedding is None and doc.error is None


__all__ = ["CLIPImageEncoder", "CLIPTextEncoder"]
