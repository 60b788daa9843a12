"""The baseline: what the seed Executor did, served the same way as ours so that transport costs match.

Per request, sequentially: decode every image with Pillow, run the Hugging Face
``CLIPImageProcessor`` on the whole request, then the model batch by batch.
"""

from io import BytesIO
from typing import Any

import torch
from docarray import DocList
from jina import Executor, requests
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from clip_image_encoder.service.documents import ImageDocument


class SeedStyleEncoder(Executor):
    def __init__(self, pretrained_model_name_or_path: str, batch_size: int = 32, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size
        self.processor = CLIPImageProcessor.from_pretrained(pretrained_model_name_or_path)
        self.model = CLIPVisionModelWithProjection.from_pretrained(pretrained_model_name_or_path).eval()

    @requests
    def encode(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        batch_size = int((parameters or {}).get("batch_size", self.batch_size))
        images = [Image.open(BytesIO(doc.bytes_)).convert("RGB") for doc in docs]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            for start in range(0, len(docs), batch_size):
                embeddings = self.model(pixel_values=pixel_values[start : start + batch_size]).image_embeds
                for doc, embedding in zip(docs[start : start + batch_size], embeddings.numpy(), strict=True):
                    doc.embedding = embedding
        return docs
