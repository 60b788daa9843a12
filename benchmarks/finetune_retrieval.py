"""Does self-supervised fine-tuning help? Copy retrieval on held-out photos, before and after, for each method.

Photos: Debian's ``stellarium-data`` telescope photos (``/usr/share/stellarium/nebulae/default``, 555 of
them: a domain of its own, dark skies and stars, far from ImageNet), split at random into training and
held-out images. The model is fine-tuned on the training images only. On the held-out ones, each query
is an edited copy of one original (`copy_edits.edited_copies`: crop, resize, JPEG, colour, rotation, text,
flip, combined), and is searched among all held-out originals by cosine similarity:

- recall@1: the original ranks first;
- mAP: with one relevant original per query, average precision is 1 / its rank, so mAP is the mean
  reciprocal rank.

    apt-get install stellarium-data
    python benchmarks/finetune_retrieval.py --model efficientnet-lite0 --epochs 1 --batch-size 16 --out /tmp/ft
    python benchmarks/finetune_retrieval.py --model tiny-clip --epochs 3 --batch-size 32 --out /tmp/ft

``tiny-clip`` is a random CLIP vision tower built here (no CLIP weights can be had offline). Every
training runs in its own process, so that its ``training.json`` records its own peak memory.
Results: ``benchmarks/FINETUNE.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # copy_edits beside it; this checkout's package before an installed one
from copy_edits import edited_copies  # noqa: E402

from clip_image_encoder.images.preprocessing import Preprocessor  # noqa: E402
from clip_image_encoder.models.loading import load_model  # noqa: E402
from clip_image_encoder.training.config import TrainConfig  # noqa: E402
from clip_image_encoder.training.methods import METHODS  # noqa: E402
from clip_image_encoder.training.trainer import train  # noqa: E402

PHOTOS = Path("/usr/share/stellarium/nebulae/default")
SUFFIXES = {".jpg", ".jpeg", ".png"}


def split(photos: Path, held_out: int, train_limit: int, seed: int, work: Path) -> tuple[Path, list[Path]]:
    """A training folder of links (the trainer reads every file under it) and the held-out photos."""
    paths = sorted(path for path in photos.rglob("*") if path.suffix.lower() in SUFFIXES)
    random.Random(seed).shuffle(paths)
    train_folder = work / "train"
    train_folder.mkdir(parents=True, exist_ok=True)
    for path in paths[held_out : held_out + train_limit]:
        link = train_folder / path.name
        if not link.exists():
            link.symlink_to(path)
    return train_folder, paths[:held_out]


def queries(originals: list[Path], copies: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    rng = random.Random(seed)
    images, targets = [], []
    for index, path in enumerate(originals):
        with Image.open(path) as image:
            for copy in edited_copies(image.convert("RGB"), rng, copies):
                images.append(copy.image)
                targets.append(index)
    return images, targets


def embed(model_dir: str, images: list[Image.Image], batch_size: int = 32) -> np.ndarray:
    """The served embedding: the model as ``load_model`` gives it, with its own exact preprocessing."""
    model = load_model(model_dir, device="cpu", dtype="float32")
    preprocessor = Preprocessor(model.preprocess)
    vectors = []
    for start in range(0, len(images), batch_size):
        pixels = preprocessor.batch([preprocessor.image(image) for image in images[start : start + batch_size]])
        vectors.append(model.embed(pixels))
    matrix = np.concatenate(vectors)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def retrieval(originals: np.ndarray, copies: np.ndarray, targets: list[int]) -> dict[str, float]:
    """recall@1 and mAP (mean reciprocal rank: one relevant original per query)."""
    scores = copies @ originals.T
    target_scores = scores[np.arange(len(targets)), targets]
    ranks = 1 + (scores > target_scores[:, None]).sum(axis=1)
    return {"recall@1": float(np.mean(ranks == 1)), "mAP": float(np.mean(1 / ranks))}


def tiny_clip(folder: Path) -> str:
    """A random CLIP vision tower (the tests' tiny shape), saved as users' folders are."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        config = CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=32
        )
        config.projection_dim = 32
        CLIPVisionModelWithProjection(config).save_pretrained(folder)
        CLIPImageProcessorPil().save_pretrained(folder)
    return str(folder)


def _train_in_child(config: TrainConfig) -> None:
    train(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0", help="efficientnet-lite0, tiny-clip, or a folder")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=1000, help="at most this many training photos")
    parser.add_argument("--copies", type=int, default=2, help="edited copies of each held-out photo")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone-learning-rate", type=float, default=TrainConfig.backbone_learning_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="work folder: the split, the models, results.json")
    args = parser.parse_args()

    train_folder, held_out = split(args.photos, args.held_out, args.train_images, args.seed, args.out)
    model = tiny_clip(args.out / "tiny-clip") if args.model == "tiny-clip" else args.model
    originals = [Image.open(path).convert("RGB") for path in held_out]
    copies, targets = queries(held_out, args.copies, args.seed)
    print(f"{len(list(train_folder.iterdir()))} training photos; {len(originals)} held out, {len(copies)} queries")

    results = {"before": retrieval(embed(model, originals), embed(model, copies), targets)}
    print(f"before: {results['before']}", flush=True)
    for method in args.methods:
        out = args.out / f"{Path(args.model).name}-{method}"
        config = TrainConfig(
            data=train_folder,
            out=out,
            pretrained_model_name_or_path=model,
            method=method,
            epochs=args.epochs,
            batch_size=args.batch_size,
            backbone_learning_rate=args.backbone_learning_rate,
            seed=args.seed,
            device="cpu",
            resume=(out / "checkpoint" / "last.pt").exists() and not (out / "training.json").exists(),
        )
        started = time.perf_counter()
        if not (out / "training.json").exists():
            child = multiprocessing.get_context("spawn").Process(target=_train_in_child, args=(config,))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"training {method} failed (exit code {child.exitcode})")
        record = json.loads((out / "training.json").read_text())
        after = retrieval(embed(str(out), originals), embed(str(out), copies), targets)
        results[method] = {
            **after,
            "loss_per_epoch": record["loss_per_epoch"],
            "seconds_per_step": round(sum(record["seconds_per_epoch"]) / (record["steps_per_epoch"] * args.epochs), 2),
            "images_per_second": record["images_per_second"],
            "peak_rss_mb": record["peak_rss_mb"],
            "wall_seconds": round(time.perf_counter() - started),
        }
        print(f"{method}: {results[method]}", flush=True)
    setup = {key: str(value) for key, value in vars(args).items()}
    (args.out / f"results-{Path(args.model).name}.json").write_text(json.dumps({"setup": setup, **results}, indent=2))


if __name__ == "__main__":
    main()
