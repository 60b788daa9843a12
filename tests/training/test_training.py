"""Self-supervised fine-tuning: the losses against hand-computed values, the views, reproducibility and
resume, the saved folder served by the Executor, and the inputs that must fail with a clear message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from docarray import DocList
from helpers import free_port, run_cli
from jina import Flow
from PIL import Image
from safetensors.torch import load_file
from tiny_clip import VISION_FAMILIES, save_tiny_backbone, save_tiny_vision_tower

from clip_image_encoder.images.preprocessing import PreprocessConfig, Preprocessor
from clip_image_encoder.models.loading import load_model
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder
from clip_image_encoder.training.augmentations import Augmenter, ViewSpec
from clip_image_encoder.training.config import TrainConfig
from clip_image_encoder.training.losses import barlow_twins, nt_xent, sinkhorn_knopp, swav
from clip_image_encoder.training.methods import METHODS
from clip_image_encoder.training.trainer import EpochResult, train


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smaller than conftest's tiny CLIP: 32x32 inputs keep a training step of the tests in milliseconds."""
    return save_tiny_vision_tower(tmp_path_factory.mktemp("small-clip"), image_size=32, patch_size=16)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    """Eight real photos (crops of the test photos), in a nested folder, plus a broken file and a text file."""
    folder = tmp_path_factory.mktemp("train-images")
    (folder / "more").mkdir()
    for index, (name, photo) in enumerate(photos.items()):
        for part in range(2 if index < 2 else 1):
            height, width = photo.shape[:2]
            crop = photo[part * height // 4 :, part * width // 4 :]
            target = folder / ("more" if part else ".") / f"{name}-{part}.jpg"
            Image.fromarray(np.ascontiguousarray(crop)).save(target)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def small_config(images: Path, model: Path, out: Path, **changes) -> TrainConfig:
    settings = {
        "pretrained_model_name_or_path": str(model),
        "device": "cpu",
        "batch_size": 4,
        "epochs": 2,
        "progress": False,
        **changes,
    }
    return TrainConfig(data=images, out=out, **settings)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


# --- losses ---


def test_nt_xent_equals_the_hand_computed_value():
    # Two images, views equal: each view's positive has cosine 1, its two negatives cosine 0, so with
    # temperature 0.5 every row is -log(e^2 / (e^2 + 2)).
    identity = torch.eye(2)
    assert nt_xent(identity, identity, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    # Views swapped: the positive has cosine 0, the negatives 0 and 1: -log(1 / (1 + 1 + e^2)).
    swapped = identity.flip(0)
    assert nt_xent(identity, swapped, 0.5).item() == pytest.approx(math.log(2 + math.exp(2)), rel=1e-6)


def test_barlow_twins_equals_the_hand_computed_value():
    # Standardised over the batch, both columns of `first` are (1, -1); `second`'s are (1, -1) and (-1, 1), so
    # the cross-correlation is [[1, -1], [1, -1]]: on-diagonal (1-1)^2 + (1+1)^2 = 4, off-diagonal 1 + 1 = 2.
    first = torch.tensor([[3.0, 5.0], [1.0, -5.0]])
    second = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    lambd = 0.0051
    assert barlow_twins(first, second, lambd, eps=0).item() == pytest.approx(4 + 2 * lambd, rel=1e-6)
    assert barlow_twins(first, first, lambd, eps=0).item() == pytest.approx(2 * lambd, rel=1e-6)


def test_sinkhorn_knopp_equals_one_iteration_by_hand():
    # exp(scores / 1) = [[e, 1], [1, 1]]; normalising the prototypes' rows to 1/2 each gives
    # [[e/(2(e+1)), 1/4], [1/(2(e+1)), 1/4]] per sample; then each sample's row is normalised to sum 1.
    e = math.e
    sample_0 = np.array([e / (2 * (e + 1)), 1 / 4])
    sample_1 = np.array([1 / (2 * (e + 1)), 1 / 4])
    expected = np.stack([sample_0 / sample_0.sum(), sample_1 / sample_1.sum()])
    codes = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), epsilon=1.0, iterations=1)
    np.testing.assert_allclose(codes.numpy(), expected, rtol=1e-6)


def test_sinkhorn_knopp_spreads_the_batch_evenly_over_the_prototypes():
    scores = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    codes = sinkhorn_knopp(scores, epsilon=0.5, iterations=50)
    np.testing.assert_allclose(codes.sum(dim=1).numpy(), 1, rtol=1e-5)
    np.testing.assert_allclose(codes.sum(dim=0).numpy(), 16 / 4, rtol=1e-3)


def reference_swav(scores: list[np.ndarray], temperature: float, epsilon: float, iterations: int) -> float:
    """The SwAV paper's Algorithm 1 in numpy, for two global crops and any number of others."""

    def sinkhorn(s: np.ndarray) -> np.ndarray:
        q = np.exp(s / epsilon).T
        q /= q.sum()
        k, b = q.shape
        for _ in range(iterations):
            q /= q.sum(axis=1, keepdims=True) * k
            q /= q.sum(axis=0, keepdims=True) * b
        return (q * b).T

    def log_softmax(s: np.ndarray) -> np.ndarray:
        s = s / temperature
        return s - np.log(np.exp(s).sum(axis=1, keepdims=True))

    losses = []
    for assigned in (0, 1):
        q = sinkhorn(scores[assigned])
        losses += [-(q * log_softmax(s)).sum(axis=1).mean() for v, s in enumerate(scores) if v != assigned]
    return float(np.mean(losses))


def test_swav_equals_the_papers_algorithm():
    generator = torch.Generator().manual_seed(1)
    scores = [torch.rand(6, 5, generator=generator) * 2 - 1 for _ in range(4)]
    expected = reference_swav([s.double().numpy() for s in scores], temperature=0.1, epsilon=0.05, iterations=3)
    assert swav(scores, temperature=0.1, epsilon=0.05, iterations=3).item() == pytest.approx(expected, rel=1e-5)


# --- augmentations ---

PREPROCESS = PreprocessConfig(shortest_edge=32, crop_size=(32, 32))


@pytest.mark.parametrize("spec", [ViewSpec(), ViewSpec(solarize_probability=1.0, blur_probability=1.0)])
def test_views_have_the_asked_shape_and_stay_in_the_pixel_range(spec):
    augment = Augmenter(spec, (24, 20), PREPROCESS)
    batch = torch.rand(5, 3, 32, 32)
    views = augment(batch)
    assert views.shape == (5, 3, 24, 20)
    pixels = views * torch.tensor(PREPROCESS.image_std).view(1, 3, 1, 1) + torch.tensor(PREPROCESS.image_mean).view(
        1, 3, 1, 1
    )
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_views_depend_on_the_seed_only():
    augment = Augmenter(ViewSpec(), (32, 32), PREPROCESS)
    batch = torch.rand(4, 3, 32, 32)
    torch.manual_seed(7)
    first = augment(batch)
    torch.manual_seed(7)
    again = augment(batch)
    torch.manual_seed(8)
    other = augment(batch)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_small_views_are_upsampled_for_a_backbone_of_fixed_input_size():
    augment = Augmenter(ViewSpec(size_fraction=0.5), (16, 16), PREPROCESS, upsample_to=(32, 32))
    assert augment(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


# --- training ---


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(images, small_model, tmp_path, method):
    whole = train(small_config(images, small_model, tmp_path / "whole", method=method))

    def interrupt(result: EpochResult) -> None:
        if result.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_config(images, small_model, tmp_path / "resumed", method=method), on_epoch_end=interrupt)
    resumed = train(small_config(images, small_model, tmp_path / "resumed", method=method, resume=True))

    assert resumed["loss_per_step"] == whole["loss_per_step"]
    expected, actual = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert not torch.equal(expected["visual_projection.weight"], weights(small_model)["visual_projection.weight"])


def test_the_same_seed_gives_the_same_model_and_another_seed_another(images, small_model, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(small_config(images, small_model, tmp_path / name, epochs=1, seed=seed))
    a, b, c = (weights(tmp_path / name)["visual_projection.weight"] for name in "abc")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_the_record_says_how_the_model_was_trained_and_lists_skipped_files(images, small_model, tmp_path):
    train(small_config(images, small_model, tmp_path / "model", method="swav", accumulate=2, batch_size=2))
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["method"] == "swav"
    assert record["images"] == 8
    assert record["steps_per_epoch"] == 2
    assert len(record["loss_per_step"]) == 4
    assert len(record["loss_per_epoch"]) == 2
    assert record["view_sizes"][2] == [14, 14]
    assert record["small_views_upsampled"]  # a CLIP ViT takes its own input size only
    skipped = (tmp_path / "model" / "skipped.csv").read_text()
    assert "broken.jpg" in skipped and "notes.txt" in skipped


def test_the_trained_folder_is_served_by_the_executor_in_a_flow(images, small_model, tmp_path, photos):
    out = tmp_path / "model"
    train(small_config(images, small_model, out, epochs=1, backbone_learning_rate=1e-3))
    expected = load_model(str(out), device="cpu", dtype="float32")
    base = load_model(str(small_model), device="cpu", dtype="float32")
    flow = Flow(port=free_port()).add(uses=CLIPImageEncoder, uses_with={"pretrained_model_name_or_path": str(out)})
    with flow:
        answer = flow.post(
            "/",
            inputs=DocList[ImageDocument]([ImageDocument(tensor=photos["astronaut"])]),
            return_type=DocList[ImageDocument],
        )
    assert answer[0].error is None
    preprocessor = Preprocessor(expected.preprocess)
    pixels = preprocessor.batch([preprocessor.image(Image.fromarray(photos["astronaut"]))])
    np.testing.assert_allclose(np.asarray(answer[0].embedding), expected.embed(pixels)[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected.embed(pixels), base.embed(pixels), atol=1e-4)


def test_a_fine_tuned_efficientnet_lite0_folder_loads_as_a_model(images, tmp_path):
    out = tmp_path / "efficientnet"
    train(
        TrainConfig(
            data=images,
            out=out,
            pretrained_model_name_or_path="efficientnet-lite0",
            device="cpu",
            batch_size=2,
            epochs=1,
            progress=False,
            method="barlow_twins",
        )
    )
    model = load_model(str(out), device="cpu", dtype="float32")
    base = load_model("efficientnet-lite0", device="cpu", dtype="float32")
    assert model.preprocess == base.preprocess
    pixels = torch.rand(1, 3, 224, 224)
    assert model.embed(pixels).shape == (1, 1280)
    assert not np.allclose(model.embed(pixels), base.embed(pixels))


# --- the command line and bad inputs ---


def run_train(*argv: str) -> int:
    """``clip-image-encoder train ...`` through the command line's own parser."""
    return run_cli("train", *argv)


def test_train_command_writes_a_model_folder(images, small_model, tmp_path, capsys):
    out = tmp_path / "model"
    code = run_train(
        str(images),
        "--model",
        str(small_model),
        "--out",
        str(out),
        "--method",
        "barlow_twins",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "training.json"} <= {
        path.name for path in out.iterdir()
    }
    assert f"serve it with: clip-image-encoder serve --model {out}" in capsys.readouterr().out


def fails_with(capsys, *argv: str) -> str:
    assert run_train(*argv) == 2
    return capsys.readouterr().err


def test_an_empty_folder_is_refused(small_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = fails_with(capsys, str(tmp_path / "empty"), "--model", str(small_model), "--out", str(tmp_path / "m"))
    assert "holds no files" in err


def test_a_folder_of_broken_files_is_refused_with_an_example(small_model, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    (tmp_path / "bad" / "b.png").write_bytes(b"")
    err = fails_with(capsys, str(tmp_path / "bad"), "--model", str(small_model), "--out", str(tmp_path / "m"))
    assert "none of the 2 files" in err and "a.jpg" in err and "not a decodable image" in err


def test_fewer_images_than_a_batch_are_refused(images, small_model, tmp_path, capsys):
    err = fails_with(
        capsys, str(images), "--model", str(small_model), "--out", str(tmp_path / "m"), "--batch-size", "16"
    )
    assert "has 8 readable images, fewer than the 16 of one step" in err
    assert "lower --batch-size" in err


def test_an_output_that_cannot_be_written_is_refused_before_training(images, small_model, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = fails_with(capsys, str(images), "--model", str(small_model), "--out", str(tmp_path / "file" / "model"))
    assert "cannot be written" in err


@pytest.mark.skipif(
    hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0, reason="root writes anywhere"
)
def test_a_read_only_output_folder_is_refused(images, small_model, tmp_path, capsys):
    (tmp_path / "locked").mkdir(mode=0o500)
    err = fails_with(capsys, str(images), "--model", str(small_model), "--out", str(tmp_path / "locked" / "model"))
    assert "cannot be written" in err


def test_an_output_folder_with_files_needs_resume(images, small_model, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old.txt").write_text("")
    err = fails_with(capsys, str(images), "--model", str(small_model), "--out", str(tmp_path / "m"))
    assert "is not empty" in err and "--resume" in err
    err = fails_with(capsys, str(images), "--model", str(small_model), "--out", str(tmp_path / "m"), "--resume")
    assert "holds no checkpoint" in err


def test_resuming_with_other_settings_is_refused(images, small_model, tmp_path, capsys):
    train(small_config(images, small_model, tmp_path / "m", epochs=1))
    err = fails_with(
        capsys,
        str(images),
        "--model",
        str(small_model),
        "--out",
        str(tmp_path / "m"),
        "--resume",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--device",
        "cpu",
    )
    assert "seed 0 -> 3" in err


@pytest.mark.parametrize("family", sorted(VISION_FAMILIES))
def test_every_hugging_face_family_trains_and_its_folder_loads(family, images, tmp_path):
    """SigLIP, DINOv2 and ViT train as CLIP does, and the saved folder is a backbone of the same family."""
    save_tiny_backbone(family, tmp_path / "start", image_size=32, patch_size=16)

    train(small_config(images, tmp_path / "start", tmp_path / "tuned", epochs=1))

    before, after = weights(tmp_path / "start"), weights(tmp_path / "tuned")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    tuned = load_model(str(tmp_path / "tuned"), device="cpu")
    assert tuned.embedding_dim == load_model(str(tmp_path / "start"), device="cpu").embedding_dim == 32
