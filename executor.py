"""Entry point that Jina and a hub load (``config.yml`` names it); the code lives in the package."""

from clip_image_encoder.documents import ImageDocument, ImageMatch
from clip_image_encoder.executor import CLIPImageEncoder
from clip_image_encoder.indexer import ImageIndexer, ShardMerger

__all__ = ["CLIPImageEncoder", "ImageDocument", "ImageIndexer", "ImageMatch", "ShardMerger"]
