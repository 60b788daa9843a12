"""Replicas and shards, as ``serve --replicas N --shards M`` runs them: the same answers as one process, and a
replica killed in the middle of a stream of requests loses no Document."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from docarray import DocList
from helpers import encode_image, free_port
from jina import Client
from PIL import Image

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder, ImageItem
from clip_image_encoder.errors import OptionError
from clip_image_encoder.search.stores import open_store
from clip_image_encoder.search.stores.embedded import EmbeddedStore
from clip_image_encoder.service.documents import ImageDocument, ImageMatch
from clip_image_encoder.service.flow import build_flow
from clip_image_encoder.service.indexer import merge_top_k, shard_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from replica_fault import drill


def test_merge_top_k_takes_the_best_of_every_shard():
    shards = [
        [ImageMatch(key="a", score=0.9), ImageMatch(key="b", score=0.2)],
        [ImageMatch(key="c", score=0.95), ImageMatch(key="d", score=0.5)],
        [],
    ]
    assert [match.key for match in merge_top_k(shards, 3)] == ["c", "a", "d"]
    assert shard_of("/photos/1.jpg", 2) == shard_of("/photos/1.jpg", 2)  # stable, not Python's salted hash
    assert {shard_of(f"/photos/{i}.jpg", 3) for i in range(50)} == {0, 1, 2}


def served_answers(tiny_model_dir, photos, tmp_path, db: str, **scale: int) -> tuple[list[str], np.ndarray]:
    """Index photos (some twice) and search them through a scaled search Flow; compare with one process's
    store. Returns the keys and their embeddings."""
    options = EncoderOptions(pretrained_model_name_or_path=str(tiny_model_dir))
    images = [
        encode_image(Image.fromarray(photo).rotate(angle), "PNG") for photo in photos.values() for angle in (0, 30)
    ]
    keys = [f"/photos/{index}.png" for index in range(len(images))]
    with ImageEncoder.from_options(options) as encoder:
        vectors = np.stack(list(encoder.encode((ImageItem(image) for image in images), options)))
    with open_store(tmp_path / "one-process", index="FLAT") as reference:
        reference.upsert(keys, vectors)
        expected = [reference.search(vector, 5) for vector in vectors]

    port = free_port()
    docs = DocList[ImageDocument](
        [ImageDocument(bytes_=image, url=key) for image, key in zip(images, keys, strict=True)]
    )
    with build_flow(options, port=port, search=True, db=db, **scale):
        client = Client(host="127.0.0.1", port=port)
        indexed = client.post(
            "/index", inputs=docs, request_size=3, return_type=DocList[ImageDocument], results_in_order=True
        )
        client.post("/index", inputs=docs[:4], request_size=2, return_type=DocList[ImageDocument])  # re-indexed
        found = client.post(
            "/search",
            inputs=docs,
            request_size=3,
            parameters={"k": 5},
            return_type=DocList[ImageDocument],
            results_in_order=True,
        )
    assert [doc.id for doc in indexed] == [doc.id for doc in docs]  # order and ids kept through the replicas
    np.testing.assert_allclose(np.stack([np.asarray(doc.embedding) for doc in indexed]), vectors, atol=1e-5)
    assert [doc.id for doc in found] == [doc.id for doc in docs]
    for doc, best in zip(found, expected, strict=True):
        assert doc.error is None
        assert [match.key for match in doc.matches] == [key for key, _ in best]
        np.testing.assert_allclose([match.score for match in doc.matches], [score for _, score in best], atol=1e-5)
    return keys, vectors


def test_replicas_and_shards_answer_as_one_process_would(tiny_model_dir, photos, tmp_path):
    db = tmp_path / "sharded"
    keys, _ = served_answers(tiny_model_dir, photos, tmp_path, str(db), replicas=2, shards=2)
    shard_keys = []
    for shard in (db / "shard-0", db / "shard-1"):
        with EmbeddedStore(shard) as part:
            shard_keys.append(set(part.keys()))
            assert len(part) == len(shard_keys[-1]) > 0  # re-indexing replaced, did not add
    assert shard_keys[0].isdisjoint(shard_keys[1]) and shard_keys[0] | shard_keys[1] == set(keys)


def test_replicated_stateless_indexers_on_milvus_answer_as_one_process_would(
    tiny_model_dir, photos, tmp_path, milvus_uri
):
    """Two indexers without state in front of one Milvus collection: every Document indexed once, every search
    answered from the whole collection, whichever replica took it."""
    db = f"{milvus_uri}/replicated_{os.getpid()}"
    keys, vectors = served_answers(tiny_model_dir, photos, tmp_path, db, replicas=2, indexer_replicas=2)
    with open_store(db) as store:
        assert len(store) == len(keys)  # re-indexing replaced, did not add
        np.testing.assert_allclose(
            store.vectors(keys), vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-5
        )


@pytest.mark.parametrize(
    ("db", "scale", "message"),
    [
        ("http://127.0.0.1:19530", {"shards": 2}, "a Milvus server, which shards itself: replicate the indexer"),
        ("index", {"indexer_replicas": 2}, "a folder that one process owns: shard it"),
    ],
)
def test_each_store_scales_its_own_way(tiny_model_dir, db, scale, message):
    options = EncoderOptions(pretrained_model_name_or_path=str(tiny_model_dir))
    with pytest.raises(OptionError, match=message):
        build_flow(options, port=free_port(), search=True, db=db, **scale)


def test_a_replica_killed_mid_stream_loses_no_document(tiny_model_dir):
    figures = drill(str(tiny_model_dir), requests=15, clients=2)
    assert figures["documents_answered"] == figures["documents_sent"] == 15 * 4
    assert figures["lost"] == 0 and figures["answered_twice"] == 0
    assert figures["wrong_or_failed_embeddings"] == 0 and figures["failed_requests"] == 0
    assert figures["gateway_retries"] > 0, "the killed replica was never tried: the drill tested nothing"
    assert figures["serves_after"]
