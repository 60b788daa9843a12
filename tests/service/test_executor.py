"""The Executor on its own: parity with the Hugging Face reference and the per-Document error contract."""

from __future__ import annotations

import base64
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cosine, embed, encode_image, png_declaring_size
from PIL import Image

from clip_image_encoder.errors import ModelNotFoundError
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder

PARITY = 0.99999


def as_document(kind: str, photo: np.ndarray, folder: Path, index: int) -> tuple[ImageDocument, Image.Image]:
    """The photo as one input kind, with the image the reference processor should see for it."""
    image = Image.fromarray(photo)
    if kind == "tensor":
        return ImageDocument(tensor=photo), image
    encoded = encode_image(image, "JPEG" if kind in ("jpeg", "path") else "PNG")
    decoded = Image.open(BytesIO(encoded)).convert("RGB")
    if kind in ("jpeg", "png"):
        return ImageDocument(bytes_=encoded), decoded
    if kind == "data-uri":
        return ImageDocument(url="data:image/png;base64," + base64.b64encode(encoded).decode()), decoded
    path = folder / f"{index}.img"
    path.write_bytes(encoded)
    return ImageDocument(url=str(path) if kind == "path" else path.as_uri()), decoded


@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("kind", ["tensor", "jpeg", "png", "path", "file-uri", "data-uri"])
def test_embeddings_match_the_hugging_face_reference(executor, reference, photo_variants, tmp_path, kind, batch_size):
    pairs = [as_document(kind, photo, tmp_path, i) for i, photo in enumerate(photo_variants)]
    docs = embed(executor, [doc for doc, _ in pairs], batch_size=batch_size)
    expected = reference([image for _, image in pairs])
    assert all(doc.error is None for doc in docs)
    similarities = [cosine(doc.embedding, ref) for doc, ref in zip(docs, expected, strict=True)]
    assert min(similarities) >= PARITY, similarities


def test_same_image_as_tensor_bytes_and_url_gives_the_same_embedding(executor, photos, tmp_path):
    png = encode_image(Image.fromarray(photos["coffee"]), "PNG")
    (tmp_path / "coffee.png").write_bytes(png)
    docs = embed(
        executor,
        [
            ImageDocument(tensor=photos["coffee"]),
            ImageDocument(bytes_=png),
            ImageDocument(url=str(tmp_path / "coffee.png")),
        ],
    )
    np.testing.assert_allclose(docs[0].embedding, docs[1].embedding, atol=1e-6)
    np.testing.assert_allclose(docs[0].embedding, docs[2].embedding, atol=1e-6)


def test_embeddings_are_float32_of_the_model_dimension(executor, photos):
    (doc,) = embed(executor, [ImageDocument(tensor=photos["rocket"])])
    assert doc.embedding.dtype == np.float32 and doc.embedding.shape == (16,)


def test_preprocessed_tensor_skips_preprocessing(executor, photos):
    from clip_image_encoder.images.preprocessing import Preprocessor

    preprocessor = Preprocessor(executor.encoder.model.preprocess)
    ready = preprocessor.batch([preprocessor.image(Image.fromarray(photos["china"]))])[0].numpy()
    docs = embed(executor, [ImageDocument(tensor=ready), ImageDocument(tensor=photos["china"])])
    np.testing.assert_allclose(docs[0].embedding, docs[1].embedding, atol=1e-6)


def test_normalize_gives_unit_vectors_per_request(executor, photos):
    raw, unit = (
        embed(executor, [ImageDocument(tensor=photos["chelsea"])], normalize=flag)[0].embedding
        for flag in (False, True)
    )
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    assert np.linalg.norm(unit) == pytest.approx(1, abs=1e-6)
    assert cosine(raw, unit) == pytest.approx(1, abs=1e-6)


def test_existing_embedding_is_kept_unless_overwrite_is_asked(executor, photos):
    existing = np.ones(16, dtype=np.float32)
    (kept,) = embed(executor, [ImageDocument(tensor=photos["coffee"], embedding=existing)])
    np.testing.assert_array_equal(kept.embedding, existing)
    (redone,) = embed(executor, [ImageDocument(tensor=photos["coffee"], embedding=existing)], overwrite_embeddings=True)
    assert not np.array_equal(redone.embedding, existing)


def test_bad_documents_get_their_own_error_and_the_rest_are_embedded(executor, photos):
    jpeg = encode_image(Image.fromarray(photos["astronaut"]), "JPEG")
    docs = [
        ImageDocument(tensor=photos["astronaut"]),
        ImageDocument(bytes_=b"corrupt"),
        ImageDocument(bytes_=jpeg[: len(jpeg) // 3]),
        ImageDocument(),
        ImageDocument(url="https://example.com/remote.jpg"),
        ImageDocument(bytes_=png_declaring_size(20_000, 20_000)),
        ImageDocument(tensor=np.zeros((4, 4, 2), dtype=np.uint8)),
        ImageDocument(bytes_=jpeg),
    ]
    ids = [doc.id for doc in docs]
    result = embed(executor, docs, batch_size=3)
    assert [doc.id for doc in result] == ids
    assert result[0].error is None and result[-1].error is None
    assert result[0].embedding is not None and result[-1].embedding is not None
    for index in range(1, 7):
        assert result[index].embedding is None
        assert result[index].error.startswith(f"doc {index} (id {ids[index]}): ")
    assert "remote fetching is disabled" in result[4].error
    assert "max_image_pixels" in result[5].error or "too large" in result[5].error


def test_error_of_an_earlier_request_is_cleared_when_the_document_succeeds(executor, photos):
    doc = ImageDocument(tensor=photos["rocket"], error="stale error")
    (result,) = embed(executor, [doc])
    assert result.error is None and result.embedding is not None


def test_empty_request_returns_empty(executor):
    assert len(embed(executor, [])) == 0


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (1, 1), (200, 10, 10)),
        Image.new("P", (64, 48), 3),
        Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16)),
        Image.new("CMYK", (50, 60), (0, 80, 160, 20)),
        Image.new("LA", (50, 60), (80, 128)),
    ],
    ids=["1x1", "palette", "16-bit", "cmyk", "grey-alpha"],
)
def test_unusual_but_valid_images_are_embedded(executor, image):
    encoded = encode_image(image, "JPEG" if image.mode == "CMYK" else "PNG")
    (doc,) = embed(executor, [ImageDocument(bytes_=encoded)])
    assert doc.error is None
    assert np.isfinite(doc.embedding).all()


def test_unknown_model_folder_fails_at_start_with_how_to_fix():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        CLIPImageEncoder(pretrained_model_name_or_path="/no/such/model")


def test_uncached_hub_model_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="mount a Hugging Face cache"):
        CLIPImageEncoder(pretrained_model_name_or_path="openai/clip-vit-base-patch32")


def test_int8_dynamic_quantisation_stays_close_to_float32(tiny_model_dir, photos):
    quantized = CLIPImageEncoder(pretrained_model_name_or_path=str(tiny_model_dir), dtype="int8")
    float32 = CLIPImageEncoder(pretrained_model_name_or_path=str(tiny_model_dir))

    def docs() -> list[ImageDocument]:
        return [ImageDocument(tensor=photo) for photo in photos.values()]

    for a, b in zip(embed(quantized, docs()), embed(float32, docs()), strict=True):
        assert cosine(a.embedding, b.embedding) >= 0.99
    quantized.close()
    float32.close()


def test_image_data_can_be_left_out_of_the_response(executor, photos):
    png = encode_image(Image.fromarray(photos["coffee"]), "PNG")
    docs = [ImageDocument(bytes_=png), ImageDocument(tensor=photos["rocket"]), ImageDocument(bytes_=b"broken")]
    kept = embed(executor, [d.model_copy() for d in docs])
    assert kept[0].bytes_ == png and kept[1].tensor is not None
    dropped = embed(executor, docs, keep_image_data=False)
    assert all(d.bytes_ is None and d.tensor is None for d in dropped)
    assert dropped[0].embedding is not None and dropped[1].embedding is not None and dropped[2].error


def test_an_unreadable_model_file_is_reported_as_a_permission_problem(tiny_model_dir, tmp_path_factory):
    """save_pretrained writes weights with mode 0600: another user (a container's uid 10001) cannot read them,
    and transformers would call the file missing. Checked in a child process that has dropped root."""
    import os
    import shutil
    import tempfile

    from clip_image_encoder.models.backbones import load_backbone

    folder = Path(tempfile.mkdtemp(prefix="model-"))
    try:
        os.chmod(folder, 0o755)
        for path in tiny_model_dir.iterdir():
            shutil.copy(path, folder / path.name)
            os.chmod(folder / path.name, 0o644)
        os.chmod(folder / "model.safetensors", 0o600)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the child: become nobody, try to load, report the error text
            os.close(read_end)
            message = "loaded"
            try:
                os.setgid(65534)
                os.setuid(65534)
                load_backbone(str(folder), torch.float32)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
            os.write(write_end, message.encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            message = pipe.read()
        os.waitpid(child, 0)
    finally:
        shutil.rmtree(folder)
    assert message.startswith("ModelNotFoundError") and "permission denied" in message, message
    assert "model.safetensors" in message and "uid 65534" in message
