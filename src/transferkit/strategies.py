"""Training strategies: what trains, on what inputs, with which learning rates.

- linear: frozen backbone; features of every image computed once (cached on disk), then only the
  new head trains, on the cached features, for many cheap epochs.
- finetune: every layer trains on images (decoded once into a cache), the backbone at a lower LR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import engine, transforms
from .backbones import Preprocess
from .config import TrainConfig
from .data import DatasetSplit
from .errors import ImageDecodeError
from .features import ArrayCache, Extractor, decoded_cache, extract_features, image_key
from .images import load_rgb
from .model import LazyClassifier
from .runtime import Runtime


@dataclass
class Context:
    """What a strategy needs: resolved options, the data, the model and where it runs."""

    cfg: TrainConfig
    split: DatasetSplit
    models: LazyClassifier  # the classifier, built on first use
    pre: Preprocess
    runtime: Runtime
    feature_cache: ArrayCache
    cache_root: Path  # the cache folder (a temporary one under --no-cache)
    workers: int
    log: Callable[[str], None]
    progress: Callable  # (total, desc) -> tqdm-like bar


@dataclass
class Outcome:
    fit: engine.FitResult
    val_logits: torch.Tensor  # of the kept model, in split.val order
    state: dict[str, torch.Tensor]  # the kept model: a Classifier state dict
    info: dict  # strategy-specific facts for results.json


def param_groups(model: nn.Module, strategy: str, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Set what trains for `strategy` (requires_grad) and return the optimizer's parameter groups,
    holding only trainable parameters. linear: the head alone; finetune: everything, the backbone
    at lr * backbone_lr_mult."""
    train_backbone = strategy != "linear"
    for p in model.backbone.parameters():
        p.requires_grad_(train_backbone)
    for p in model.head.parameters():
        p.requires_grad_(True)
    groups = [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}]
    if train_backbone:
        groups.insert(0, {"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_mult,
                          "name": "backbone"})
    return groups


def _loss(cfg: TrainConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def _labels(samples) -> torch.Tensor:
    return torch.tensor([s.label for s in samples], dtype=torch.long)


def _epoch_bar(ctx: Context, desc: str):
    def factory(epoch: int, steps: int):
        return ctx.progress(steps, f"{desc} epoch {epoch}/{ctx.cfg.epochs}")
    return factory


def cached_features(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Train (eval view + augmented views) and val features from the cache, computing the
    missing ones; unreadable images are dropped from the split. Returns x_train, y_train, x_val,
    y_val and cache facts."""
    cfg, split = ctx.cfg, ctx.split

    def extractor() -> Extractor:  # only built when some features are not cached
        return Extractor(ctx.models.get().backbone, ctx.pre, ctx.runtime, batch_size=32, workers=ctx.workers)

    train_paths, val_paths = [s.path for s in split.train], [s.path for s in split.val]
    bar = ctx.progress(len(train_paths) + len(val_paths), "features")
    train_fs = extract_features(extractor, train_paths, ctx.feature_cache, cfg.aug_views, cfg.seed, bar)
    val_fs = extract_features(extractor, val_paths, ctx.feature_cache, 0, cfg.seed, bar)
    bar.close()
    errors = {**train_fs.errors, **val_fs.errors}
    keep_train = [i for i, p in enumerate(train_paths) if p not in errors]
    keep_val = [i for i, p in enumerate(val_paths) if p not in errors]
    split.drop(errors)
    split.check_not_empty()

    x_train, y_train = train_fs.features[keep_train], _labels(split.train)
    if train_fs.augmented is not None:
        aug = train_fs.augmented[keep_train]
        x_train = torch.cat([x_train, aug.flatten(0, 1)])
        y_train = torch.cat([y_train, y_train.repeat_interleave(aug.shape[1])])
    facts = {
        "features_cached": train_fs.cached + val_fs.cached,
        "features_computed": train_fs.computed + val_fs.computed,
        "aug_views": cfg.aug_views,
        "cache_entries_recomputed": ctx.feature_cache.recomputed,
    }
    return x_train, y_train, val_fs.features[keep_val], _labels(split.val), facts


def fit_head(ctx: Context, x_train, y_train, x_val, y_val) -> tuple[engine.FitResult, nn.Linear]:
    """Dropout + linear head (zero init) trained on features in fp32; the best epoch is kept."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.seed)
    linear = nn.Linear(x_train.shape[1], len(ctx.split.classes))
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.Dropout(cfg.dropout), linear)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=cfg.batch_size,
                              shuffle=True, generator=gen)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=1024)
    optimizer = engine.make_optimizer(cfg.optimizer, [{"params": head.parameters()}], cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(train_loader)
    scheduler = engine.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(train_loader)))
    bar = ctx.progress(cfg.epochs, "head")
    result, best = engine.fit(
        head, train_loader, val_loader, optimizer, scheduler, _loss(cfg),
        Runtime(torch.device("cpu"), torch.float32), lambda x: x, cfg.epochs, cfg.patience,
        on_epoch=lambda s: _tick(bar, s),
    )
    bar.close()
    head.load_state_dict(best)
    return result, linear.eval()


def train_linear(ctx: Context) -> Outcome:
    x_train, y_train, x_val, y_val, facts = cached_features(ctx)
    result, linear = fit_head(ctx, x_train, y_train, x_val, y_val)
    with torch.inference_mode():
        val_logits = linear(x_val)
    state = {f"backbone.{k}": v for k, v in ctx.models.backbone_state().items()}
    state.update({"head.weight": linear.weight.detach(), "head.bias": linear.bias.detach()})
    return Outcome(result, val_logits, state, {**facts, "network_built": ctx.models.built})


def _tick(bar, stats: engine.EpochStats) -> None:
    bar.update(1)
    bar.set_postfix(loss=f"{stats.train_loss:.3f}", val_acc=f"{stats.val_acc:.3f}")


# -- fine-tuning ---------------------------------------------------------------------------------


class DecodedImages(Dataset):
    """Images decoded once, resized to the short side the crops need, kept as uint8 in the decode
    cache; item -> (uint8 (3, S, S) view, label). Training views are seeded per (epoch, image)."""

    def __init__(self, paths: list[str], labels: list[int], pre: Preprocess, cache: ArrayCache,
                 train: bool, seed: int = 0):
        self.paths, self.labels, self.pre, self.cache = paths, labels, pre, cache
        self.keys = [image_key(p) for p in paths]
        self.train, self.seed, self.epoch = train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int):
        from PIL import Image

        arr = self.cache.get(self.keys[i], "img")
        if arr is None:
            arr = decode_into(self.cache, self.paths[i], self.keys[i], self.pre)
        return Image.fromarray(arr)

    def __getitem__(self, i: int):
        img = self.image(i)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            view = transforms.train_view(img, self.pre, rng)
        else:
            view = transforms.center_crop(img, self.pre.input_size)
        return transforms.to_tensor(view), self.labels[i]


def decode_into(cache: ArrayCache, path: str, key: str, pre: Preprocess) -> np.ndarray:
    img = load_rgb(path, min_short_side=pre.resize_size)
    arr = np.asarray(transforms.resize_short(img, pre.resize_size, pre), dtype=np.uint8)
    cache.put(key, "img", arr)
    return arr


def decode_all(ctx: Context, cache: ArrayCache) -> dict[str, str]:
    """Fill the decode cache once (so epochs never decode JPEGs again); returns unreadable files."""
    samples = ctx.split.train + ctx.split.val
    errors: dict[str, str] = {}
    bar = ctx.progress(len(samples), "decode")
    for s in samples:
        key = image_key(s.path)
        reason = cache.get_error(key)
        if reason is None and cache.get(key, "img") is None:
            try:
                decode_into(cache, s.path, key, ctx.pre)
            except ImageDecodeError as exc:
                reason = exc.reason
                cache.put_error(key, reason)
        if reason is not None:
            errors[s.path] = reason
        bar.update(1)
    bar.close()
    return errors


def train_finetune(ctx: Context) -> Outcome:
    cfg, split, runtime, model = ctx.cfg, ctx.split, ctx.runtime, ctx.models.get()
    cache = decoded_cache(ctx.cache_root, ctx.pre)
    split.drop(decode_all(ctx, cache))
    split.check_not_empty()

    def dataset(samples, train):
        return DecodedImages([s.path for s in samples], [s.label for s in samples], ctx.pre, cache, train, cfg.seed)

    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(dataset(split.train, True), batch_size=cfg.batch_size, shuffle=True,
                              generator=gen, num_workers=ctx.workers, drop_last=len(split.train) > cfg.batch_size)
    val_loader = DataLoader(dataset(split.val, False), batch_size=cfg.batch_size, num_workers=ctx.workers)

    torch.manual_seed(cfg.seed)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    runtime.train_module(model)
    groups = param_groups(model, cfg.strategy, cfg.lr, cfg.backbone_lr_mult)
    optimizer = engine.make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(train_loader)
    scheduler = engine.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(train_loader)))
    mean = torch.tensor(ctx.pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(ctx.pre.std).view(1, 3, 1, 1)
    result, best = engine.fit(
        model, train_loader, val_loader, optimizer, scheduler, _loss(cfg), runtime,
        lambda u8: runtime.to_input(u8, mean, std), cfg.epochs, cfg.patience,
        on_epoch=lambda s: ctx.log(
            f"epoch {s.epoch}: train loss {s.train_loss:.3f} acc {s.train_acc:.3f} | "
            f"val loss {s.val_loss:.3f} acc {s.val_acc:.3f} | {s.seconds:.1f}s"
        ),
        progress_factory=_epoch_bar(ctx, "finetune"),
    )
    model.load_state_dict(best)
    model.to("cpu").eval()
    # The reported accuracy is that of the saved model on the fast inference path.
    extractor = Extractor(model.backbone, ctx.pre, runtime, batch_size=32, workers=ctx.workers)
    feats = torch.cat([extractor.forward(u8) for u8, _ in val_loader])
    with torch.inference_mode():
        val_logits = model.head(feats)
    info = {"backbone_lr": cfg.lr * cfg.backbone_lr_mult, "head_lr": cfg.lr}
    return Outcome(result, val_logits, model.state_dict(), info)


STRATEGIES: dict[str, Callable[[Context], Outcome]] = {
    "linear": train_linear,
    "finetune": train_finetune,
}
