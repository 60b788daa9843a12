"""Search with words and with images: text queries from the command line and in the search Flow, and an index
that answers only queries embedded by the checkpoint it was built with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from docarray import DocList
from helpers import free_port, run_cli
from jina import Flow
from PIL import Image
from tiny_clip import CONTEXT_LENGTH, save_tiny_clip
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.search.stores.embedded import EmbeddedStore
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder, CLIPTextEncoder
from clip_image_encoder.service.flow import TEXT_ENCODER, build_flow
from clip_image_encoder.service.indexer import ImageIndexer

QUERY = "a photo of a cat"


@pytest.fixture(scope="module")
def photo_files(photos, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("search-photos")
    for name, photo in photos.items():
        Image.fromarray(photo).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def indexed(request, clip_dir, photo_files, tmp_path_factory) -> Path | str:
    """The photos indexed by the command line with the whole tiny CLIP's image tower, in a folder and in Milvus."""
    if request.param == "milvus":
        db = f"{request.getfixturevalue('milvus_uri')}/search_{os.getpid()}"
    else:
        db = tmp_path_factory.mktemp("search-db") / "db"
    assert run_cli("index", photo_files, "--db", db, "--model", clip_dir, "--quiet") == 0
    return db


def hugging_face_ranking(clip_dir: Path, files: list[Path], text: str) -> list[tuple[str, float]]:
    """The reference: CLIPModel's text and image features, tokenizer and processor as Hugging Face gives them."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(clip_dir)(
        [text], padding=True, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt"
    )
    pixels = CLIPImageProcessorPil.from_pretrained(clip_dir)(
        images=[Image.open(path).convert("RGB") for path in files], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        query = model.get_text_features(**tokens).pooler_output[0].numpy()
        images = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    scores = images @ query / (np.linalg.norm(images, axis=1) * np.linalg.norm(query))
    return sorted(((str(path), float(score)) for path, score in zip(files, scores, strict=True)), key=lambda r: -r[1])


def printed_ranking(output: str) -> list[tuple[str, float]]:
    return [(line.split()[2], float(line.split()[1])) for line in output.splitlines()]


def test_a_text_query_ranks_the_images_as_hugging_face_clip_does(clip_dir, photo_files, indexed, capsys):
    capsys.readouterr()
    assert run_cli("search", "--text", QUERY, "--db", indexed, "--model", clip_dir, "-k", 6) == 0
    ours = printed_ranking(capsys.readouterr().out)

    expected = hugging_face_ranking(clip_dir, sorted(photo_files.iterdir()), QUERY)
    assert [key for key, _ in ours] == [key for key, _ in expected]
    np.testing.assert_allclose([score for _, score in ours], [score for _, score in expected], atol=1e-4)


def test_a_text_query_of_another_checkpoint_is_refused(indexed, tmp_path, capsys):
    other = save_tiny_clip(tmp_path / "other-clip", seed=1)
    capsys.readouterr()
    assert run_cli("search", "--text", QUERY, "--db", indexed, "--model", other) == 2
    error = capsys.readouterr().err
    assert "holds embeddings of model" in error and f"come from {str(other)!r}" in error


def test_a_model_without_a_text_tower_says_so(photo_files, tmp_path, capsys):
    db = tmp_path / "db"
    assert run_cli("index", photo_files, "--db", db, "--model", "efficientnet-lite0", "--quiet") == 0
    capsys.readouterr()
    assert run_cli("search", "--text", QUERY, "--db", db, "--model", "efficientnet-lite0") == 2
    assert "no text tower" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (("--text", "   "), "empty or only whitespace"),
        ((), "give one query"),
        (("image.jpg", "--text", QUERY), "give one query"),
    ],
)
def test_a_query_must_be_one_image_or_words(clip_dir, indexed, capsys, query, message):
    capsys.readouterr()
    assert run_cli("search", *query, "--db", indexed, "--model", clip_dir) == 2
    assert message in capsys.readouterr().err


def test_an_empty_index_says_how_to_fill_it(clip_dir, tmp_path, capsys):
    EmbeddedStore(tmp_path / "db").close()
    assert run_cli("search", "--text", QUERY, "--db", tmp_path / "db", "--model", clip_dir) == 2
    assert f"the index in {tmp_path / 'db'} is empty: add images with 'clip-image-encoder index" in (
        capsys.readouterr().err
    )


def test_the_search_flow_answers_image_and_text_queries_in_one_request(clip_dir, photo_files, photos, store_db):
    options = EncoderOptions(pretrained_model_name_or_path=str(clip_dir), local_uri_roots=[str(photo_files)])
    flow = build_flow(options, port=free_port(), search=True, db=store_db)
    files = sorted(photo_files.iterdir())
    edited_coffee = np.asarray(Image.fromarray(photos["coffee"]).resize((300, 200)))
    queries = [ImageDocument(text=QUERY), ImageDocument(tensor=edited_coffee), ImageDocument(text=" ")]
    with flow:
        assert [name for name in flow._deployment_nodes if name != "gateway"] == ["encoder", "text_encoder", "indexer"]
        flow.post("/index", inputs=DocList[ImageDocument]([ImageDocument(url=str(p)) for p in files]))
        by_text, by_image, blank = flow.post(
            "/search", inputs=DocList[ImageDocument](queries), parameters={"k": 6}, return_type=DocList[ImageDocument]
        )
        flow.post("/delete", inputs=DocList[ImageDocument]([ImageDocument(url=str(photo_files / "coffee.png"))]))
        (after_delete,) = flow.post(
            "/search",
            inputs=DocList[ImageDocument]([queries[1]]),
            parameters={"k": 6},
            return_type=DocList[ImageDocument],
        )

    expected = hugging_face_ranking(clip_dir, files, QUERY)
    assert by_text.error is None
    assert [match.key for match in by_text.matches] == [key for key, _ in expected]
    np.testing.assert_allclose([m.score for m in by_text.matches], [s for _, s in expected], atol=1e-4)
    assert by_image.matches[0].key == str(photo_files / "coffee.png")
    assert len(blank.matches) == 0
    assert "empty or only whitespace" in blank.error
    assert after_delete.error is None
    kept = [match.key for match in by_image.matches if not match.key.endswith("coffee.png")]
    assert [match.key for match in after_delete.matches] == kept and len(kept) == len(files) - 1


def test_delete_forgets_images_of_the_store_by_path(clip_dir, photo_files, store_db, capsys, monkeypatch):
    assert run_cli("index", photo_files, "--db", store_db, "--model", clip_dir, "--quiet") == 0
    monkeypatch.chdir(photo_files)
    capsys.readouterr()
    assert run_cli("delete", "coffee.png", str(photo_files / "rocket.png"), "/not/indexed.png", "--db", store_db) == 0
    held = len(list(photo_files.iterdir())) - 2
    assert f"deleted 2 of 3 keys; {held} in {store_db}" in capsys.readouterr().out
    assert run_cli("search", "--text", QUERY, "--db", store_db, "--model", clip_dir, "-k", 10) == 0
    found = printed_ranking(capsys.readouterr().out)
    assert len(found) == held and not any(key.endswith(("coffee.png", "rocket.png")) for key, _ in found)


def test_a_flow_refuses_text_queries_of_another_checkpoint_and_keeps_answering_images(
    clip_dir, photo_files, photos, tmp_path
):
    other = save_tiny_clip(tmp_path / "other-clip", seed=1)
    flow = (
        Flow(port=free_port())
        .add(
            name="encoder",
            uses=CLIPImageEncoder,
            uses_with={"pretrained_model_name_or_path": str(clip_dir), "local_uri_roots": [str(photo_files)]},
        )
        .add(
            name="text_encoder",
            uses=CLIPTextEncoder,
            uses_with={"pretrained_model_name_or_path": str(other)},
            uses_requests=TEXT_ENCODER.uses_requests,
        )
        .add(name="indexer", uses=ImageIndexer, uses_with={"db": str(tmp_path / "db")})
    )
    files = sorted(photo_files.iterdir())
    with flow:
        flow.post("/index", inputs=DocList[ImageDocument]([ImageDocument(url=str(p)) for p in files]))
        by_text, by_image = flow.post(
            "/search",
            inputs=DocList[ImageDocument]([ImageDocument(text=QUERY), ImageDocument(tensor=photos["rocket"])]),
            return_type=DocList[ImageDocument],
        )
    assert not by_text.matches
    assert by_text.error.startswith("cannot search this index: ")
    assert f"holds embeddings of model {str(clip_dir)!r}" in by_text.error
    assert by_image.error is None and by_image.matches[0].key == str(photo_files / "rocket.png")


def test_search_writes_its_results_as_a_page(clip_dir, photo_files, indexed, tmp_path, capsys):
    page = tmp_path / "results.html"
    assert (
        run_cli("search", "--text", "a <red> cup", "--db", indexed, "--model", clip_dir, "-k", 3, "--html", page) == 0
    )
    keys = [key for key, _ in printed_ranking(capsys.readouterr().out)]
    html = page.read_text()
    assert "a &lt;red&gt; cup" in html
    assert [html.index(key) for key in keys] == sorted(html.index(key) for key in keys)  # in rank order
    assert html.count("data:image/jpeg;base64,") == 3
