"""Text queries: CLIPTextEncoder embeds texts with the text tower of the image encoder's checkpoint.

The tiny CLIP and SigLIP checkpoints are whole models (both towers) with a byte-level BPE tokenizer
that the tests write themselves. SigLIP's own tokenizer needs sentencepiece and a trained
``spiece.model``, which cannot be had offline, so the SigLIP folder holds the same CLIP tokenizer;
what is checked there is SigLIP's tower and its padding to the context length.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from docarray import DocList
from helpers import cosine, embed, free_port
from jina import Flow
from tiny_clip import CONTEXT_LENGTH, PROJECTION_DIM, VISION, byte_level_tokenizer, text_config
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
)

from clip_image_encoder.config.files import text_config_yaml
from clip_image_encoder.config.options import TEXT_ENCODER_OPTIONS
from clip_image_encoder.encoding.texts import TextEncoder
from clip_image_encoder.errors import OptionError
from clip_image_encoder.service.documents import ImageDocument, TextDocument
from clip_image_encoder.service.executors import CLIPImageEncoder, CLIPTextEncoder

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "a photo of a cat",
    "two dogs playing in the snow",
    "A RED CAR!",
    "the quick brown fox jumps over the lazy dog " * 6,  # far longer than the context: truncated
]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: CLIPTokenizer) -> Path:
    """A random whole SigLIP; its tokenizer is the tests' CLIP tokenizer (see the module docstring)."""
    folder = tmp_path_factory.mktemp("tiny-siglip-full")
    torch.manual_seed(1)
    SiglipModel(SiglipConfig(text_config=text_config(tokenizer), vision_config=VISION)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessorPil().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_executor(clip_dir: Path):
    encoder = CLIPTextEncoder(pretrained_model_name_or_path=str(clip_dir), device="cpu")
    yield encoder
    encoder.close()


def embed_texts(executor: CLIPTextEncoder, docs: list[TextDocument], **parameters) -> DocList[TextDocument]:
    return asyncio.run(executor.encode(docs=DocList[TextDocument](docs), parameters=parameters))


def assert_parity(ours: list[np.ndarray], reference: np.ndarray) -> None:
    assert len(ours) == len(reference)
    for embedding, expected in zip(ours, reference, strict=True):
        assert embedding.shape == expected.shape
        assert cosine(embedding, expected) >= 0.99999


def test_the_long_text_is_longer_than_the_context(tokenizer):
    assert len(tokenizer(TEXTS[-1])["input_ids"]) > CONTEXT_LENGTH


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_clip_text_embeddings_equal_the_hugging_face_reference(clip_dir, batch_size):
    reference_tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    model = CLIPTextModelWithProjection.from_pretrained(clip_dir).eval()
    inputs = reference_tokenizer(TEXTS, padding=True, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**inputs).text_embeds.numpy()

    ours = TextEncoder.from_pretrained(str(clip_dir), device="cpu").encode(TEXTS, batch_size=batch_size)
    assert_parity(ours, expected)


def test_siglip_text_embeddings_equal_the_hugging_face_reference_padded_to_the_context(siglip_dir):
    reference_tokenizer = AutoTokenizer.from_pretrained(siglip_dir)
    model = SiglipModel.from_pretrained(siglip_dir).eval()
    inputs = reference_tokenizer(
        TEXTS, padding="max_length", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt"
    )
    with torch.inference_mode():
        expected = model.get_text_features(**inputs).pooler_output.numpy()

    encoder = TextEncoder.from_pretrained(str(siglip_dir), device="cpu")
    assert_parity(encoder.encode(TEXTS, batch_size=2), expected)
    assert encoder.embedding_dim == expected.shape[1]


def test_a_text_longer_than_the_context_embeds_as_its_first_tokens(clip_dir):
    encoder = TextEncoder.from_pretrained(str(clip_dir), device="cpu")
    long, longer = encoder.encode([TEXTS[-1], TEXTS[-1] + " and then some more words"])
    np.testing.assert_array_equal(long, longer)


def test_empty_blank_and_missing_texts_get_their_own_errors_and_the_others_are_embedded(text_executor):
    docs = [
        TextDocument(text="a photo of a cat"),
        TextDocument(text=""),
        TextDocument(text="   "),
        TextDocument(text=None),
        TextDocument(text="a dog"),
    ]
    answer = embed_texts(text_executor, docs)

    assert [doc.id for doc in answer] == [doc.id for doc in docs]
    for index in (0, 4):
        assert answer[index].error is None
        assert np.asarray(answer[index].embedding).shape == (PROJECTION_DIM,)
    for index in (1, 2, 3):
        assert answer[index].embedding is None
        assert answer[index].error.startswith(f"doc {index} (id {docs[index].id}): ")
    assert "empty or only whitespace" in answer[1].error
    assert "empty or only whitespace" in answer[2].error
    assert "no text" in answer[3].error


def test_a_non_string_text_gets_its_own_error(clip_dir):
    first, second = TextEncoder.from_pretrained(str(clip_dir), device="cpu").encode([42, "a cat"])
    assert "text must be a string, got int" in str(first)
    assert second.shape == (PROJECTION_DIM,)


def test_normalize_is_a_per_request_option(text_executor):
    answer = embed_texts(text_executor, [TextDocument(text="a cat")], normalize=True)
    assert np.linalg.norm(np.asarray(answer[0].embedding)) == pytest.approx(1, abs=1e-5)


def test_image_options_are_refused_by_the_text_encoder(clip_dir):
    with pytest.raises(OptionError, match="rotation"):
        CLIPTextEncoder(pretrained_model_name_or_path=str(clip_dir), rotation=90)


def test_text_config_yml_is_the_declared_defaults_of_the_text_options():
    assert (REPO / "text_config.yml").read_text() == text_config_yaml()


def test_text_encoder_signature_names_its_options_only():
    """Jina checks text_config.yml's `with:` against this signature."""
    parameters = inspect.signature(CLIPTextEncoder.__init__).parameters
    assert [name for name in parameters if name in TEXT_ENCODER_OPTIONS] == list(TEXT_ENCODER_OPTIONS)
    assert "rotation" not in parameters


def test_the_image_encoder_loads_the_vision_tower_of_the_same_folder_in_the_same_space(clip_dir, photos, text_executor):
    image_encoder = CLIPImageEncoder(pretrained_model_name_or_path=str(clip_dir), device="cpu")
    try:
        image = embed(image_encoder, [ImageDocument(tensor=photos["chelsea"])])[0]
    finally:
        image_encoder.close()
    text = embed_texts(text_executor, [TextDocument(text="a photo of a cat")])[0]

    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    with torch.inference_mode():
        pixel_values = processor(images=[photos["chelsea"]], return_tensors="pt")["pixel_values"]
        expected = CLIPModel.from_pretrained(clip_dir).eval().get_image_features(pixel_values).pooler_output[0]
    assert image.error is None
    assert cosine(np.asarray(image.embedding), expected.numpy()) >= 0.99999
    assert np.asarray(image.embedding).shape == np.asarray(text.embedding).shape == (PROJECTION_DIM,)
    assert -1 <= cosine(np.asarray(image.embedding), np.asarray(text.embedding)) <= 1


def test_a_flow_serves_the_text_encoder(clip_dir):
    flow = Flow(port=free_port()).add(
        uses=CLIPTextEncoder, uses_with={"pretrained_model_name_or_path": str(clip_dir), "device": "cpu"}
    )
    sent = [TextDocument(text="a photo of a cat"), TextDocument(text=" ")]
    with flow:
        answer = flow.post("/", inputs=DocList[TextDocument](sent), return_type=DocList[TextDocument])

    assert [doc.id for doc in answer] == [doc.id for doc in sent]
    assert np.asarray(answer[0].embedding).shape == (PROJECTION_DIM,)
    assert answer[0].error is None
    assert answer[1].embedding is None
    assert answer[1].error.startswith("doc 1 ")
