"""The Jina Executors: map Documents to image sources (or text queries), run the encoder, write results back.

They orchestrate only: options, decoding, preprocessing, tokenising and the models live in their own modules.
The Documents of concurrent requests join shared forward passes (`service.batching`); each request's
options and errors stay its own.
"""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import dataclasses
import inspect
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import torch
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.config.options import OPTIONS, TEXT_ENCODER_OPTIONS, EncoderOptions
from clip_image_encoder.encoding.images import EncodeResult, ImageEncoder, ImageItem
from clip_image_encoder.encoding.metrics import PipelineMetrics
from clip_image_encoder.encoding.outputs import OutputOptions, apply_to_results
from clip_image_encoder.encoding.texts import TextEncoder
from clip_image_encoder.errors import EmbeddingError, OptionError
from clip_image_encoder.images.uris import ImageSource
from clip_image_encoder.models.identity import model_identity
from clip_image_encoder.service.batching import RequestBatcher, RunBatch
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

    def _batcher(self, run_batch: RunBatch, concurrency: int, metrics: PipelineMetrics | None = None) -> RequestBatcher:
        return RequestBatcher(
            run_batch,
            wait_s=self.options.batch_wait_ms / 1000,
            max_queued=self.options.max_queued_documents,
            concurrency=concurrency,
            metrics=metrics,
        )

    async def _embed_joined(
        self, indexed_docs: list[tuple[int, Any]], inputs: list[Any], key: Hashable, options: EncoderOptions
    ) -> None:
        """Queue this request's inputs for joined batches, then write its results with its own output options."""
        async with self._in_flight.track():
            raw = await self.batcher.submit(inputs, key, options.batch_size)
        self._write_results(indexed_docs, apply_to_results(raw, OutputOptions.from_options(options)))

    def close(self) -> None:
        self.batcher.close()
        super().close()

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
        # Without overlap (cpu), concurrent batches only contend for the cores: one at a time; on cuda two, so that
        # the next one decodes while the model runs this one (benchmarks/RESULTS_SMALL.md).
        self.batcher = self._batcher(self._embed_batch, 2 if self.encoder.overlaps else 1, self.encoder.metrics)

    __init__.__signature__ = _with_option_keywords(_OptionsExecutor.__init__)

    @requests
    async def encode(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """Write ``embedding`` (or ``error``) on every Document, keeping order and ids.

        The Documents of concurrent requests join shared forward passes (`service.batching`); this request's
        output options apply to its own. A bad parameter fails this request alone, with a message that names
        it; a full queue refuses it at once (`OverloadedError`). On a stop signal, requests in flight and
        queued are answered first (`service.shutdown`).
        """
        options = self._request_options(parameters or {})
        self.encoder.check_request(options)
        todo = [
            (index, doc)
            for index, doc in enumerate(docs)
            if (doc.embedding is None or options.overwrite_embeddings) and not _is_text_query(doc)
        ]
        with self.monitor("encode_seconds", "Time to embed the Documents of one request"):
            items = [_image_item(doc, options.rotation) for _, doc in todo]
            await self._embed_joined(todo, items, (options.preprocessing, options.batch_size), options)
        if not options.keep_image_data:
            for doc in docs:
                doc.bytes_ = None
                doc.tensor = None
        return docs

    async def pass_keys_on(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """In the search Flow, ``/delete`` carries keys (``url`` or id) for the indexer: nothing to embed."""
        return docs

    def _embed_batch(self, key: tuple[str, int], items: list[ImageItem]) -> list[EncodeResult]:
        """One joined batch, on a worker thread: raw float32 embeddings; each request shapes its own part."""
        preprocessing, batch_size = key
        raw = dataclasses.replace(self.options, preprocessing=preprocessing, batch_size=batch_size, **RAW_OUTPUT)
        return list(self.encoder.encode(items, raw))

    def close(self) -> None:
        super().close()
        self.encoder.close()


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
        # One model, called from a worker thread: one joined batch at a time keeps them from contending.
        self.batcher = self._batcher(self._embed_batch, 1)

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
            await self._embed_texts(list(enumerate(docs)), options)
        return docs

    async def encode_text_queries(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """In the search Flow (after the image encoder, bound by `service.flow.TEXT_ENCODER`'s ``uses_requests``):
        embed the Documents that are a text query; leave the others as they are."""
        options = self._request_options(parameters or {})
        queries = [(index, doc) for index, doc in enumerate(docs) if _is_pending_text_query(doc)]
        await self._embed_texts(queries, options)
        return docs

    async def pass_images_on(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """In the search Flow, ``/index`` carries images for the indexer: nothing for a text tower to do."""
        return docs

    async def _embed_texts(self, indexed_docs: list[tuple[int, Any]], options: EncoderOptions) -> None:
        await self._embed_joined(indexed_docs, [doc.text for _, doc in indexed_docs], options.batch_size, options)

    def _embed_batch(self, batch_size: int, texts: list[object]) -> list[EncodeResult]:
        """One joined batch of texts, on a worker thread: raw float32 embeddings (or each text's error)."""
        return self.encoder.encode(texts, batch_size)


RAW_OUTPUT = {"normalize": False, "quantize": False, "embed_dim": 0, "output_dtype": "float32"}
"""The output options of a joined batch: the model's own float32; `apply_to_results` gives each request its own."""


def _is_pending_text_query(doc: ImageDocument) -> bool:
    """A text query the image encoder left alone: it carries text, and neither an embedding nor an error."""
    return doc.text is not None and doc.embedding is None and doc.error is None


__all__ = ["CLIPImageEncoder", "CLIPTextEncoder"]
