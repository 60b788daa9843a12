"""Entry point that Jina and a hub load (``config.yml``, ``text_config.yml`` name it); the code is in the package."""

from clip_image_encoder.service.documents import ImageDocument, ImageMatch, TextDocument
from clip_image_encoder.service.executors import CLIPImageEncoder, CLIPTextEncoder
from clip_image_encoder.service.indexer import ImageIndexer, ShardMerger

__all__ = [
    "CLIPImageEncoder",
    "CLIPTextEncoder",
    "ImageDocument",
    "ImageIndexer",
    "ImageMatch",
    "ShardMerger",
    "TextDocument",
]
