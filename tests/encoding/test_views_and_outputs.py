"""Region of interest, rotation and output options, each against a hand-checked expectation on real photos."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from helpers import cosine, embed, encode_image, exif_rotated_png
from PIL import Image
from scipy.stats import spearmanr

from clip_image_encoder.encoding.outputs import QUANTIZATION_SCALE
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder


def one(executor: CLIPImageEncoder, doc: ImageDocument, **parameters) -> np.ndarray:
    (result,) = embed(executor, [doc], **parameters)
    assert result.error is None, result.error
    return np.asarray(result.embedding)


def test_roi_equals_embedding_the_cropped_image(executor, photos):
    photo = photos["astronaut"]
    x, y, width, height = 120, 40, 200, 260
    cropped = np.ascontiguousarray(photo[y : y + height, x : x + width])
    with_roi = one(executor, ImageDocument(tensor=photo, roi=[x, y, width, height]))
    np.testing.assert_allclose(with_roi, one(executor, ImageDocument(tensor=cropped)), atol=1e-6)
    assert cosine(with_roi, one(executor, ImageDocument(tensor=photo))) < 0.9999


def test_roi_is_in_displayed_coordinates_after_exif(executor, photos):
    photo = photos["chelsea"]
    rotated_file = exif_rotated_png(Image.fromarray(photo))
    roi = [10, 20, 150, 120]
    from_file = one(executor, ImageDocument(bytes_=rotated_file, roi=roi))
    np.testing.assert_allclose(from_file, one(executor, ImageDocument(tensor=photo, roi=roi)), atol=1e-6)


@pytest.mark.parametrize(
    ("roi", "message"),
    [
        ([0, 0, 0, 10], "is empty"),
        ([-1, 0, 10, 10], "reaches outside"),
        ([550, 0, 100, 10], "reaches outside"),
        ([0, 0, 10], "must be"),
    ],
)
def test_bad_roi_is_an_error_of_that_document_only(executor, photos, roi, message):
    docs = embed(executor, [ImageDocument(tensor=photos["coffee"], roi=roi), ImageDocument(tensor=photos["coffee"])])
    assert docs[0].embedding is None and message in docs[0].error
    assert docs[1].error is None


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_equals_embedding_the_rotated_image(executor, photos, rotation):
    photo = photos["rocket"]
    rotated = np.ascontiguousarray(np.rot90(photo, k=rotation // 90))
    np.testing.assert_allclose(
        one(executor, ImageDocument(tensor=photo, rotation=rotation)),
        one(executor, ImageDocument(tensor=rotated)),
        atol=1e-6,
    )


def test_four_quarter_turns_are_the_identity(executor, photos):
    photo = photos["china"]
    turned = photo
    for _ in range(4):
        turned = np.ascontiguousarray(np.rot90(turned))
    np.testing.assert_array_equal(turned, photo)
    np.testing.assert_allclose(
        one(executor, ImageDocument(tensor=photo)),
        one(executor, ImageDocument(tensor=np.ascontiguousarray(np.rot90(photo, k=3)), rotation=90)),
        atol=1e-6,
    )


def test_request_rotation_applies_where_the_document_has_none(executor, photos):
    photo = photos["flower"]
    docs = embed(executor, [ImageDocument(tensor=photo), ImageDocument(tensor=photo, rotation=0)], rotation=180)
    rotated = one(executor, ImageDocument(tensor=np.ascontiguousarray(np.rot90(photo, k=2))))
    np.testing.assert_allclose(docs[0].embedding, rotated, atol=1e-6)
    np.testing.assert_allclose(docs[1].embedding, one(executor, ImageDocument(tensor=photo)), atol=1e-6)


def test_unsupported_rotation_is_an_error(executor, photos):
    (doc,) = embed(executor, [ImageDocument(tensor=photos["coffee"], rotation=45)])
    assert "rotation 45 is not one of" in doc.error


def test_quantized_dot_products_track_float_cosines(executor, photo_variants):
    def docs() -> list[ImageDocument]:
        return [ImageDocument(tensor=photo) for photo in photo_variants[:20]]

    floats = np.stack([d.embedding for d in embed(executor, docs())])
    quantized = np.stack([d.embedding for d in embed(executor, docs(), quantize=True)])
    assert quantized.dtype == np.int8 and np.abs(quantized).max() <= QUANTIZATION_SCALE
    pairs = list(combinations(range(len(floats)), 2))
    float_cosines = [cosine(floats[i], floats[j]) for i, j in pairs]
    int_dots = [int(quantized[i].astype(np.int32) @ quantized[j].astype(np.int32)) for i, j in pairs]
    assert spearmanr(float_cosines, int_dots).statistic >= 0.99
    approx = np.array(int_dots) / QUANTIZATION_SCALE**2
    assert np.abs(approx - float_cosines).max() < 0.05


def test_embed_dim_truncates_to_the_first_dimensions(executor, photos):
    full = one(executor, ImageDocument(tensor=photos["chelsea"]))
    short = one(executor, ImageDocument(tensor=photos["chelsea"]), embed_dim=8)
    np.testing.assert_allclose(short, full[:8], atol=1e-6)
    short_unit = one(executor, ImageDocument(tensor=photos["chelsea"]), embed_dim=8, normalize=True)
    np.testing.assert_allclose(short_unit, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


def test_embed_dim_above_the_model_dimension_is_refused(executor, photos):
    with pytest.raises(ValueError, match="embed_dim=17 is larger than the model's 16"):
        embed(executor, [ImageDocument(tensor=photos["chelsea"])], embed_dim=17)


def test_float16_output(executor, photos):
    full = one(executor, ImageDocument(tensor=photos["coffee"]))
    half = one(executor, ImageDocument(tensor=photos["coffee"]), output_dtype="float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=2e-3, atol=2e-3)


def test_roi_works_with_encoded_bytes_in_fast_mode(executor, photos):
    jpeg = encode_image(Image.fromarray(photos["astronaut"]), "JPEG", quality=95)
    exact = one(executor, ImageDocument(bytes_=jpeg, roi=[0, 0, 256, 256]))
    fast = one(executor, ImageDocument(bytes_=jpeg, roi=[0, 0, 256, 256]), preprocessing="fast")
    assert cosine(exact, fast) > 0.999
