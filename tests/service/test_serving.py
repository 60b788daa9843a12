"""Serving: a Flow over gRPC and HTTP, and `jina executor --uses config.yml`, answer real clients."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from docarray import DocList
from helpers import encode_image, free_port, heavy_copy, wait_for_port
from jina import Client, Flow
from PIL import Image

from clip_image_encoder.cli.main import main
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder

REPO = Path(__file__).resolve().parents[2]


def mixed_request(photos: dict[str, np.ndarray], with_bytes: bool) -> list[ImageDocument]:
    """Good and broken Documents; HTTP cannot carry bytes_, so it gets data uris instead."""
    png = encode_image(Image.fromarray(photos["chelsea"]), "PNG")
    good_encoded = ImageDocument(bytes_=png) if with_bytes else ImageDocument(url=data_uri(png))
    broken_encoded = ImageDocument(bytes_=b"broken") if with_bytes else ImageDocument(url=data_uri(b"broken"))
    return [
        ImageDocument(tensor=photos["astronaut"]),
        broken_encoded,
        good_encoded,
        ImageDocument(url="/no/such/file.jpg"),
        ImageDocument(tensor=np.zeros((3, 3, 5), dtype=np.uint8)),
    ]


def data_uri(payload: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(payload).decode()


def check_mixed_answer(sent: list[ImageDocument], answer: DocList[ImageDocument]) -> None:
    assert [doc.id for doc in answer] == [doc.id for doc in sent]
    good, bad = [0, 2], [1, 3, 4]
    for index in good:
        assert answer[index].error is None
        assert np.asarray(answer[index].embedding).shape == (16,)
    for index in bad:
        assert answer[index].embedding is None
        assert answer[index].error.startswith(f"doc {index} ")
    assert "not a decodable image" in answer[1].error
    assert "outside the folders this server reads" in answer[3].error
    assert "is not an image" in answer[4].error


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_flow_embeds_good_documents_and_reports_broken_ones(tiny_model_dir, photos, protocol):
    flow = Flow(protocol=protocol, port=free_port()).add(
        uses=CLIPImageEncoder, uses_with={"pretrained_model_name_or_path": str(tiny_model_dir)}
    )
    sent = mixed_request(photos, with_bytes=protocol == "grpc")
    with flow:
        answer = flow.post("/", inputs=DocList[ImageDocument](sent), return_type=DocList[ImageDocument])
        check_mixed_answer(sent, answer)
        # The Executor keeps serving after bad input, and honours per-request parameters.
        again = flow.post(
            "/encode",
            inputs=DocList[ImageDocument]([ImageDocument(tensor=photos["rocket"])]),
            parameters={"normalize": True},
            return_type=DocList[ImageDocument],
        )
    assert np.linalg.norm(np.asarray(again[0].embedding)) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    ("model", "dimension"), [("tiny-clip-folder", 16), ("efficientnet-lite0", 1280), ("efficientnet-lite0-copy", 512)]
)
def test_jina_executor_cli_serves_from_config_yml(tiny_model_dir, photos, model, dimension):
    """Jina's own way to serve config.yml, offline: a local CLIP folder, the packaged backbone, and its copy-detection
    read-out (whose whitening is package data of the installed package)."""
    port = free_port()
    name = str(tiny_model_dir) if model == "tiny-clip-folder" else model
    uses_with = json.dumps({"pretrained_model_name_or_path": name})
    jina_cli = Path(sys.executable).with_name("jina")
    server = subprocess.Popen(
        [str(jina_cli), "executor", "--uses", "config.yml", "--port", str(port), "--uses-with", uses_with],
        cwd=REPO,
        env={**os.environ, "JINA_LOG_LEVEL": "ERROR"},
        start_new_session=True,
    )
    try:
        wait_for_port(port, server)
        client = Client(host="127.0.0.1", port=port, protocol="grpc")
        answer = client.post(
            "/",
            inputs=DocList[ImageDocument]([ImageDocument(tensor=photos["coffee"]), ImageDocument()]),
            return_type=DocList[ImageDocument],
        )
        assert np.asarray(answer[0].embedding).shape == (dimension,)
        assert "no image" in answer[1].error
    finally:
        # SIGINT to the whole group: SIGTERM leaves Jina's child process serving on the port.
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)


def test_search_flow_indexes_then_finds_the_original_of_an_edited_photo(tiny_model_dir, photos, tmp_path):
    from clip_image_encoder.service.documents import ImageMatch
    from clip_image_encoder.service.indexer import ImageIndexer

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, photo in photos.items():
        Image.fromarray(photo).save(folder / f"{name}.png")
    flow = (
        Flow(port=free_port())
        .add(
            uses=CLIPImageEncoder,
            uses_with={"pretrained_model_name_or_path": str(tiny_model_dir), "local_uri_roots": [str(folder)]},
        )
        .add(uses=ImageIndexer, uses_with={"db": str(tmp_path / "db")})
    )
    indexed = DocList[ImageDocument]([ImageDocument(url=str(path)) for path in sorted(folder.iterdir())])
    edited = Image.fromarray(photos["coffee"]).resize((300, 200))
    with flow:
        for _ in range(2):  # indexing twice must not duplicate
            flow.post("/index", inputs=indexed, return_type=DocList[ImageDocument])
        (answer,) = flow.post(
            "/search",
            inputs=DocList[ImageDocument]([ImageDocument(tensor=np.asarray(edited))]),
            parameters={"k": 10},
            return_type=DocList[ImageDocument],
        )
    keys = [match.key for match in answer.matches]
    assert isinstance(answer.matches[0], ImageMatch)
    assert len(keys) == len(photos) == len(set(keys))
    assert keys[0] == str(folder / "coffee.png")
    assert answer.matches[0].score > answer.matches[1].score


def test_a_search_flow_on_the_copy_read_out_finds_the_original_of_a_cropped_captioned_copy(photos, tmp_path):
    """Copy detection online: the copy-detection read-out served in a search Flow answers a heavy copy (60% crop,
    caption, JPEG 50) with its original, above the threshold `duplicates` uses, and the other photos below it."""
    from clip_image_encoder.models.backbones import backbone_of
    from clip_image_encoder.models.identity import DUPLICATES_MODEL
    from clip_image_encoder.service.indexer import ImageIndexer

    flow = (
        Flow(port=free_port())
        .add(uses=CLIPImageEncoder, uses_with={"pretrained_model_name_or_path": DUPLICATES_MODEL})
        .add(uses=ImageIndexer, uses_with={"db": str(tmp_path / "db")})
    )
    names = sorted(photos)
    indexed = DocList[ImageDocument]([ImageDocument(id=name, tensor=photos[name]) for name in names])
    with flow:
        flow.post("/index", inputs=indexed, return_type=DocList[ImageDocument])
        answers = flow.post(
            "/search",
            inputs=DocList[ImageDocument]([ImageDocument(bytes_=heavy_copy(photos[name])) for name in names]),
            parameters={"k": len(names)},
            return_type=DocList[ImageDocument],
        )
    threshold = backbone_of(DUPLICATES_MODEL).duplicate_threshold
    for name, answer in zip(names, answers, strict=True):
        assert answer.matches[0].key == name, (name, [match.key for match in answer.matches])
        assert answer.matches[0].score >= threshold > answer.matches[1].score, name


def test_flow_yml_describes_the_encoders_and_the_indexer():
    from clip_image_encoder.service.flow import TEXT_ENCODER

    flow = Flow.load_config(str(REPO / "flow.yml"))
    assert [name for name in flow._deployment_nodes if name != "gateway"] == ["encoder", "text_encoder", "indexer"]
    assert flow._deployment_nodes["text_encoder"].args.uses_requests == TEXT_ENCODER.uses_requests


def test_serve_command_serves_the_options_of_its_config_and_flags(tiny_model_dir, photos, tmp_path):
    """`clip-image-encoder serve` reads config.yml's `with:` (here: normalize) and its flags override it (embed_dim)."""
    from clip_image_encoder.config.files import config_yaml

    config = tmp_path / "config.yml"
    config.write_text(
        config_yaml()
        .replace("openai/clip-vit-base-patch32", str(tiny_model_dir))
        .replace("normalize: false", "normalize: true")
    )
    port = free_port()
    cli = Path(sys.executable).with_name("clip-image-encoder")
    server = subprocess.Popen(
        [str(cli), "serve", "--config", str(config), "--port", str(port), "--embed-dim", "8"],
        env={**os.environ, "JINA_LOG_LEVEL": "ERROR"},
        start_new_session=True,
    )
    try:
        wait_for_port(port, server)
        client = Client(host="127.0.0.1", port=port, protocol="grpc")
        (answer,) = client.post(
            "/",
            inputs=DocList[ImageDocument]([ImageDocument(tensor=photos["coffee"])]),
            return_type=DocList[ImageDocument],
        )
        embedding = np.asarray(answer.embedding)
        assert embedding.shape == (8,)
        assert np.linalg.norm(embedding) == pytest.approx(1, abs=1e-5)
        assert main(["health", "--port", str(port)]) == 0  # what the image's HEALTHCHECK runs
        assert main(["health", "--port", str(free_port()), "--timeout", "1"]) == 1
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)
