"""The training loop: a served backbone plus a method's head, trained on a folder's views, then saved to serve.

Reproducible by construction: the head is initialised from the seed, the image order of epoch ``e``
comes from ``(seed, e)`` and the augmentations of batch ``b`` from ``(seed, b)``, so a run resumed from
the checkpoint of an epoch ends with the weights an uninterrupted run has (tested). The learning rate is
a function of the step (linear warm-up over the first 10% of steps, then cosine to zero), not a
scheduler's state. Backbone BatchNorm statistics stay frozen: small batches would only blur them.

    from clip_image_encoder.training.config import TrainConfig
    from clip_image_encoder.training.trainer import train

    record = train(TrainConfig(data=Path("photos"), out=Path("model"), method="simclr",
                               pretrained_model_name_or_path="efficientnet-lite0", epochs=5))
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clip_image_encoder.errors import TrainingError
from clip_image_encoder.models.backbones import backbone_of, load_backbone
from clip_image_encoder.models.devices import resolve_device
from clip_image_encoder.models.network import Network
from clip_image_encoder.training.augmentations import Augmenter, output_size
from clip_image_encoder.training.config import TrainConfig
from clip_image_encoder.training.data import ImageFolder
from clip_image_encoder.training.methods import METHODS, Head
from clip_image_encoder.training.saving import (
    load_checkpoint,
    prepare_output,
    save_checkpoint,
    save_model,
    save_record,
)

WARMUP_FRACTION = 0.1


@dataclass
class EpochResult:
    """What one finished epoch reports (to the record, and to an ``on_epoch_end`` callback)."""

    epoch: int
    """1-based."""
    mean_loss: float
    seconds: float
    images_per_second: float


@dataclass
class _Run:
    """Everything a step needs, built once."""

    config: TrainConfig
    network: Network
    head: Head
    augmenters: list[Augmenter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    autocast_dtype: torch.dtype | None
    steps_per_epoch: int
    step_losses: list[float] = field(default_factory=list)
    epochs: list[EpochResult] = field(default_factory=list)


def train(config: TrainConfig, on_epoch_end: Callable[[EpochResult], None] | None = None) -> dict[str, Any]:
    """Fine-tune, checkpointing after every epoch, then write the model folder; returns the training record."""
    out = Path(config.out)
    prepare_output(out, config.resume)
    device = resolve_device(config.device)
    network = load_backbone(config.pretrained_model_name_or_path, torch.float32)
    with ThreadPoolExecutor(config.num_workers, thread_name_prefix="decode") as pool:
        images = ImageFolder(Path(config.data), network.preprocess, pool, config.max_image_pixels)
        per_step = config.batch_size * config.accumulate
        if len(images.paths) < per_step:
            raise TrainingError(
                f"{config.data} has {len(images.paths)} readable images, fewer than the {per_step} of one step "
                f"(batch size {config.batch_size} x accumulate {config.accumulate}): lower --batch-size or add images"
            )
        run = _build_run(config, network, device, len(images.paths) // per_step)
        first_epoch = _resume(run, out) if config.resume else 0
        started = time.perf_counter()
        with tqdm(
            total=config.epochs * run.steps_per_epoch,
            initial=first_epoch * run.steps_per_epoch,
            unit="step",
            desc=f"{config.method}",
            disable=not config.progress,
        ) as progress:
            for epoch in range(first_epoch, config.epochs):
                result = _train_epoch(run, images, epoch, progress)
                run.epochs.append(result)
                save_checkpoint(out, _checkpoint(run, epoch + 1))
                if on_epoch_end is not None:
                    on_epoch_end(result)
    record = _record(run, images, time.perf_counter() - started)
    save_model(out, network.module, network.preprocess, _packaged_name(config.pretrained_model_name_or_path))
    save_record(out, record, images.skipped)
    return record


def _build_run(config: TrainConfig, network: Network, device: torch.device, steps_per_epoch: int) -> _Run:
    torch.manual_seed(config.seed)
    head = METHODS[config.method].build_head(network.embedding_dim)
    network.module.to(device).train()
    for module in network.module.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    head.to(device).train()
    optimizer = torch.optim.AdamW(
        [
            {"params": list(network.module.parameters()), "lr": config.backbone_learning_rate},
            {"params": list(head.parameters()), "lr": config.learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    autocast_dtype = _autocast_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    augmenters = _augmenters(config, network, device)
    return _Run(config, network, head, augmenters, optimizer, scaler, device, autocast_dtype, steps_per_epoch)


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision on cuda only: bfloat16 needs no loss scaling; float16 on GPUs that lack it."""
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _augmenters(config: TrainConfig, network: Network, device: torch.device) -> list[Augmenter]:
    """One per view; a smaller view (SwAV's local crops) that the backbone cannot take (a ViT with fixed
    position embeddings) is cropped at its size and then upsampled to the model's input size."""
    model_size = network.preprocess.output_size
    augmenters = []
    for spec in METHODS[config.method].views:
        size = output_size(spec, model_size)
        upsample_to = None if size == model_size or _accepts(network, size, device) else model_size
        augmenters.append(Augmenter(spec, size, network.preprocess, upsample_to).to(device))
    return augmenters


def _accepts(network: Network, size: tuple[int, int], device: torch.device) -> bool:
    try:
        with torch.no_grad():
            network.forward(torch.zeros(1, 3, *size, device=device))
    except (ValueError, RuntimeError):
        return False
    return True


def _train_epoch(run: _Run, images: ImageFolder, epoch: int, progress: tqdm) -> EpochResult:
    config = run.config
    order = np.random.default_rng([config.seed, epoch]).permutation(len(images.paths))
    used = run.steps_per_epoch * config.batch_size * config.accumulate
    batches = images.batches(order[:used].tolist(), config.batch_size)
    started, losses = time.perf_counter(), []
    for step in range(run.steps_per_epoch):
        global_step = epoch * run.steps_per_epoch + step
        loss = _optimizer_step(run, batches, epoch, global_step)
        losses.append(loss)
        run.step_losses.append(loss)
        speed = (step + 1) * config.batch_size * config.accumulate / (time.perf_counter() - started)
        progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{speed:.1f}")
        progress.update()
    seconds = time.perf_counter() - started
    return EpochResult(epoch + 1, float(np.mean(losses)), seconds, used / seconds)


def _optimizer_step(run: _Run, batches: Any, epoch: int, global_step: int) -> float:
    """``accumulate`` batches forward and backward, then one optimiser step; returns the mean loss."""
    config, total = run.config, 0.0
    for micro in range(config.accumulate):
        pixels = next(batches).to(run.device, non_blocking=True)
        # The views of a batch depend on the seed and the batch's index only: a resumed run sees the same ones.
        torch.manual_seed(config.seed * 1_000_003 + global_step * config.accumulate + micro)
        views = [augment(pixels) for augment in run.augmenters]
        autocast = torch.autocast(run.device.type, run.autocast_dtype) if run.autocast_dtype else nullcontext()
        with autocast:  # the backbone in mixed precision; the head and the loss in float32, for their sums
            embeddings = [embedding.float() for embedding in _embed_views(run.network, views)]
        loss = run.head.loss(embeddings) / config.accumulate
        run.scaler.scale(loss).backward()
        total += loss.item()
    if not math.isfinite(total):
        raise TrainingError(f"the loss became {total} at step {global_step + 1}: lower the learning rates")
    run.head.before_optimizer_step(epoch)
    factor = _learning_rate_factor(global_step, run.steps_per_epoch * config.epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _embed_views(network: Network, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """The backbone's served embedding of every view, one forward pass per view size."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, view in enumerate(views):
        by_size.setdefault(tuple(view.shape[2:]), []).append(index)
    embeddings: list[torch.Tensor | None] = [None] * len(views)
    for indices in by_size.values():
        outputs = network.forward(torch.cat([views[i] for i in indices])).chunk(len(indices))
        for index, output in zip(indices, outputs, strict=True):
            embeddings[index] = output
    return embeddings  # type: ignore[return-value]


def _learning_rate_factor(step: int, total_steps: int) -> float:
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


def _checkpoint(run: _Run, epochs_done: int) -> dict[str, Any]:
    return {
        "epochs_done": epochs_done,
        "fingerprint": run.config.fingerprint(),
        "backbone": run.network.module.state_dict(),
        "head": run.head.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step_losses": run.step_losses,
        "epochs": [asdict(result) for result in run.epochs],
    }


def _resume(run: _Run, out: Path) -> int:
    """Restore the state of the last finished epoch; returns how many epochs are done."""
    state = load_checkpoint(out)
    expected = run.config.fingerprint()
    differences = [
        f"{key} {state['fingerprint'].get(key)!r} -> {value!r}"
        for key, value in expected.items()
        if state["fingerprint"].get(key) != value
    ]
    if differences:
        raise TrainingError(
            f"--resume: the checkpoint in {out} was trained with other settings ({'; '.join(differences)}); "
            "resume with the same ones, or train into a new folder"
        )
    if state["epochs_done"] >= run.config.epochs:
        raise TrainingError(
            f"--resume: {out} has already trained {state['epochs_done']} epochs; pass a larger --epochs to train more"
        )
    run.network.module.load_state_dict(state["backbone"])
    run.head.load_state_dict(state["head"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.step_losses = list(state["step_losses"])
    run.epochs = [EpochResult(**result) for result in state["epochs"]]
    return state["epochs_done"]


def _record(run: _Run, images: ImageFolder, seconds: float) -> dict[str, Any]:
    config = run.config
    return {
        "method": config.method,
        "base_model": config.pretrained_model_name_or_path,
        "data": str(Path(config.data).resolve()),
        "images": len(images.paths),
        "skipped_files": len(images.skipped),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "accumulate": config.accumulate,
        "steps_per_epoch": run.steps_per_epoch,
        "learning_rate": config.learning_rate,
        "backbone_learning_rate": config.backbone_learning_rate,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "device": str(run.device),
        "mixed_precision": str(run.autocast_dtype).removeprefix("torch.") if run.autocast_dtype else "off",
        "view_sizes": [list(augment.size) for augment in run.augmenters],
        "small_views_upsampled": any(augment.upsample_to for augment in run.augmenters),
        "loss_per_epoch": [result.mean_loss for result in run.epochs],
        "loss_per_step": run.step_losses,
        "seconds_per_epoch": [round(result.seconds, 2) for result in run.epochs],
        "images_per_second": [round(result.images_per_second, 2) for result in run.epochs],
        "seconds_this_run": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **({"peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20)} if run.device.type == "cuda" else {}),
    }


def _packaged_name(name_or_path: str) -> str | None:
    """The packaged backbone's name for a packaged model or a folder fine-tuned from one, else None."""
    backbone = backbone_of(name_or_path)
    return None if backbone.model_types else backbone.name
