"""Training strategies: what trains, on what inputs, with which learning rates.

- linear: frozen backbone; features of every image computed once (cached on disk), then only the
  new head trains, on the cached features, for many cheap epochs.
- finetune: every layer trains on images (decoded once into a cache), the backbone at a lower LR.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from . import engine, transforms
from .backbones import Preprocess
from .config import TrainConfig, strategy_defaults
from .data import DatasetSplit
from .errors import ImageDecodeError, UserError
from .features import ArrayCache, Extractor, FeaturePass, decoded_cache, image_key
from .images import load_rgb
from .model import Classifier, LazyClassifier
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
    run_dir: Path
    resume: dict | None = None  # a checkpoint to continue from (--resume)
    features: tuple | None = None  # cached_features' result, once computed (auto, then its choice)
    feature_pass: FeaturePass | None = None  # started early (decoding while the network is built)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"


@dataclass
class Outcome:
    fit: engine.FitResult
    val_logits: torch.Tensor  # of the kept model, in split.val order
    state: dict[str, torch.Tensor]  # the kept model: a Classifier state dict
    info: dict  # strategy-specific facts for results.json


def param_groups(model: Classifier, stages: list[list[str]], strategy: str, lr: float,
                 backbone_lr_mult: float = 0.1, unfreeze: int = 2, lr_decay: float = 0.5) -> list[dict]:
    """Set what trains for `strategy` (requires_grad), keep BatchNorm of frozen parts in eval
    mode, and return the optimizer's parameter groups (only trainable parameters, except under
    gradual, whose stage groups are unfrozen later by `unfreeze_top`).

    linear: the head alone. finetune / lp-ft: everything, the backbone at lr * backbone_lr_mult.
    scratch: everything at lr (random weights: nothing to preserve).
    partial: the head and the last `unfreeze` stages. gradual: one group per stage, its LR
    lr * backbone_lr_mult * lr_decay**(distance from the top stage); all frozen at first."""
    params = dict(model.backbone.named_parameters())
    trainable = {"linear": 0, "partial": min(unfreeze, len(stages)), "gradual": 0}.get(strategy, len(stages))
    for i, stage in enumerate(stages):
        for name in stage:
            params[name].requires_grad_(i >= len(stages) - trainable)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.refresh_frozen_norms()
    head = {"params": list(model.head.parameters()), "lr": lr, "name": "head"}
    if strategy == "gradual":
        n = len(stages)
        groups = [{"params": [params[k] for k in stage], "lr": lr * backbone_lr_mult * lr_decay ** (n - 1 - i),
                   "name": f"stage{i}"} for i, stage in enumerate(stages)]
        return groups + [head]
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    body_lr = lr if strategy == "scratch" else lr * backbone_lr_mult
    return ([{"params": body, "lr": body_lr, "name": "backbone"}] if body else []) + [head]


def unfreeze_top(model: Classifier, stages: list[list[str]], k: int) -> None:
    """Gradual unfreezing: the top `k` stages train from now on (BatchNorm included)."""
    params = dict(model.backbone.named_parameters())
    for i, stage in enumerate(stages):
        for name in stage:
            params[name].requires_grad_(i >= len(stages) - k)
    model.refresh_frozen_norms()


def gradual_schedule(epoch: int, epochs: int, n_stages: int) -> int:
    """Stages trainable in `epoch` (1-based): none in the first (the head warms up), then more
    each epoch, all of them by the last."""
    if epoch <= 1:
        return 0
    return min(n_stages, -(-(epoch - 1) * n_stages // max(1, epochs - 1)))


def _loss(cfg: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.Module:
    """Cross-entropy; with --class-weights auto each class weighs N / (C * count) (inverse
    frequency), so rare classes count as much as common ones."""
    weight = None
    if cfg.class_weights == "auto":
        counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
        weight = len(labels) / (num_classes * counts)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def train_loader(cfg: TrainConfig, dataset, labels: torch.Tensor, workers: int = 0, drop_last=False) -> DataLoader:
    """Shuffled batches, or with --balanced-sampler every class equally likely per draw."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.balanced_sampler:
        counts = torch.bincount(labels).float()
        sampler = WeightedRandomSampler((1.0 / counts)[labels].double(), len(labels), replacement=True, generator=gen)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                      num_workers=workers, drop_last=drop_last)


def _labels(samples) -> torch.Tensor:
    return torch.tensor([s.label for s in samples], dtype=torch.long)


def _epoch_bar(ctx: Context, desc: str):
    def factory(epoch: int, steps: int):
        return ctx.progress(steps, f"{desc} epoch {epoch}/{ctx.cfg.epochs}")
    return factory


def cached_features(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Train (eval view + augmented views) and val features from the cache, computing the
    missing ones; unreadable images are dropped from the split. Returns x_train, y_train, x_val,
    y_val and cache facts. Computed once per context."""
    if ctx.features is None:
        ctx.features = _cached_features(ctx)
    return ctx.features


FEATURE_STRATEGIES = ("linear", "lp-ft", "auto")  # the strategies that start from cached features


def start_feature_pass(cfg: TrainConfig, split: DatasetSplit, pre: Preprocess, cache: ArrayCache,
                       workers: int) -> FeaturePass:
    """The features of the train (eval view + --aug-views) and val images: cached ones read, the
    others decoding from now on (see `FeaturePass`), so it can start before the network is built."""
    return FeaturePass([([s.path for s in split.train], cfg.aug_views), ([s.path for s in split.val], 0)],
                       pre, cache, cfg.seed, batch_size=32, workers=workers)


def _cached_features(ctx: Context):
    cfg, split = ctx.cfg, ctx.split

    def extractor() -> Extractor:  # built only when some features are not cached
        return Extractor(ctx.models.get().backbone, ctx.pre, ctx.runtime, batch_size=32, workers=ctx.workers)

    feature_pass = ctx.feature_pass or start_feature_pass(cfg, split, ctx.pre, ctx.feature_cache, ctx.workers)
    ctx.feature_pass = None
    train_paths, val_paths = [s.path for s in split.train], [s.path for s in split.val]
    bar = ctx.progress(len(train_paths) + len(val_paths), "features")
    train_fs, val_fs = feature_pass.run(extractor, bar)
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


def fit_head(ctx: Context, x_train, y_train, x_val, y_val, hp: dict | None = None) -> tuple[engine.FitResult, nn.Linear]:
    """Dropout + linear head (zero init) trained on features in fp32; the best epoch is kept.
    `hp` overrides epochs / lr / batch_size / weight_decay / patience (lp-ft's probe)."""
    cfg = dataclasses.replace(ctx.cfg, **(hp or {}))
    torch.manual_seed(cfg.seed)
    linear = nn.Linear(x_train.shape[1], len(ctx.split.classes))
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.Dropout(cfg.dropout), linear)
    loader = train_loader(cfg, TensorDataset(x_train, y_train), y_train)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=1024)
    optimizer = engine.make_optimizer(cfg.optimizer, [{"params": head.parameters()}], cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = engine.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(loader)))
    bar = ctx.progress(cfg.epochs, "head")
    result, best = engine.fit(
        head, loader, val_loader, optimizer, scheduler, _loss(cfg, y_train, len(ctx.split.classes)),
        Runtime(torch.device("cpu"), torch.float32), lambda x: x, cfg.epochs, cfg.patience,
        on_epoch=lambda s: _tick(bar, s),
        # lp-ft's probe (hp given) is cheap and deterministic: only the main fit checkpoints.
        checkpoint=None if hp else ctx.checkpoint, resume=None if hp else ctx.resume,
    )
    bar.close()
    head.load_state_dict(best)
    return result, linear.eval()


def fit_logistic(ctx: Context, x_train, y_train, x_val, y_val, hp: dict | None = None) -> tuple[engine.FitResult, nn.Linear]:
    """Multinomial logistic regression, fitted full-batch by scipy's L-BFGS-B (float64) on
    standardized features (`scale`: the std with a floor), folded back into one `nn.Linear` on the
    raw features. The objective is scikit-learn's LogisticRegression's (tested to give its
    probabilities): the mean cross-entropy plus weight_decay / 2 * |W|^2, the bias unpenalized,
    i.e. C = 1 / (weight_decay * n); with two classes one logit, as there. --class-weights auto
    and --balanced-sampler weigh each class by inverse frequency (class_weight="balanced").
    Convex: the converged model is kept, nothing is selected on the val set. The history records
    the losses every LBFGS_STEP iterations. Not scikit-learn itself: importing it costs 0.7 s,
    scipy.optimize 0.4 s (a torch optimizer imports torch._dynamo: 1.1 s)."""
    from scipy.optimize import minimize

    cfg, k = dataclasses.replace(ctx.cfg, **(hp or {})), len(ctx.split.classes)
    xt, yt = x_train.double().numpy(), y_train.numpy()
    xv, yv = x_val.double().numpy(), y_val.numpy()
    mean, std = xt.mean(0), scale(xt)
    zt, zv = (xt - mean) / std, (xv - mean) / std
    balanced = cfg.class_weights == "auto" or cfg.balanced_sampler
    counts = np.maximum(np.bincount(yt, minlength=k), 1)
    weights = (len(yt) / (k * counts))[yt] if balanced else np.ones(len(yt))
    weights = weights / weights.sum()
    # logits = (z @ W + b) @ to_logits: one column and logits (-z/2, z/2) for two classes
    to_logits = np.array([[-0.5, 0.5]]) if k == 2 else np.eye(k)
    d, m = zt.shape[1], to_logits.shape[0]
    onehot = np.eye(k)[yt]

    def log_probs(z: np.ndarray, theta: np.ndarray) -> np.ndarray:
        logits = (z @ theta[:-m].reshape(d, m) + theta[-m:]) @ to_logits
        logits -= logits.max(1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, lp = theta[:-m].reshape(d, m), log_probs(zt, theta)
        loss = -(weights * lp[np.arange(len(yt)), yt]).sum() + cfg.weight_decay / 2 * (w * w).sum()
        g = ((np.exp(lp) - onehot) * weights[:, None]) @ to_logits.T  # d loss / d (z @ W + b)
        return loss, np.concatenate([(zt.T @ g + cfg.weight_decay * w).ravel(), g.sum(0)])

    def stats(z: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
        if not len(y):
            return 0.0, 0.0
        lp = log_probs(z, theta)
        return float(-lp[np.arange(len(y)), y].mean()), float((lp.argmax(1) == y).mean())

    theta = np.zeros(d * m + m)
    result, start, done = engine.FitResult(unit="iteration"), time.perf_counter(), 0
    bar = ctx.progress(LBFGS_MAX_ITER, "head (L-BFGS)")
    while done < LBFGS_MAX_ITER:
        fit = minimize(objective, theta, jac=True, method="L-BFGS-B",
                       options={"maxiter": LBFGS_STEP, "gtol": 1e-6, "ftol": 64 * np.finfo(float).eps})
        theta, iters = fit.x, int(fit.nit)
        done += iters
        seconds = time.perf_counter() - start
        row = engine.EpochStats(done, *stats(zt, yt, theta), *stats(zv, yv, theta), 0.0, seconds, seconds)
        result.history.append(row)
        _tick(bar, row, iters)
        if iters < LBFGS_STEP:  # converged
            break
    bar.close()
    result.best_epoch, result.best_val_acc = done, result.history[-1].val_acc
    coef = (theta[:-m].reshape(d, m) @ to_logits).T / std  # (k, d), on raw features
    intercept = theta[-m:] @ to_logits - coef @ mean
    linear = nn.Linear(x_train.shape[1], k)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(coef))
        linear.bias.copy_(torch.from_numpy(intercept))
    return result, linear.eval()


STD_FLOOR_PERCENTILE = 10


def scale(x: np.ndarray) -> np.ndarray:
    """Per-feature scale for standardizing: the standard deviation, floored at its 10th
    percentile over features. Plain standardization blows up near-constant features (std ~0.01
    where the median is ~0.3): on small data the fit leans on them with huge raw weights (78 on the
    80-image ants/bees sample), which tiny input changes (INT8, another decoder) flip. Measured with
    the floor, Lite0: sample 91.3 -> 95.0%, hymenoptera 94.8 -> 95.4%, flowers 84.0 -> 84.0%, and
    INT8 export no longer loses accuracy on the sample."""
    std = x.std(0)
    return np.maximum(std, np.percentile(std, STD_FLOOR_PERCENTILE)) + 1e-6


# L-BFGS runs in chunks of LBFGS_STEP iterations (one row of the history each), at most LBFGS_MAX_ITER.
LBFGS_STEP, LBFGS_MAX_ITER = 10, 1000


def train_head(ctx: Context, x_train, y_train, x_val, y_val, hp: dict | None = None):
    """The head on cached features: logistic regression (--optimizer lbfgs, the default) or
    epochs of a first-order optimizer."""
    if (hp or {}).get("optimizer", ctx.cfg.optimizer) == "lbfgs":
        return fit_logistic(ctx, x_train, y_train, x_val, y_val, hp)
    return fit_head(ctx, x_train, y_train, x_val, y_val, hp)


def train_linear(ctx: Context) -> Outcome:
    x_train, y_train, x_val, y_val, facts = cached_features(ctx)
    result, linear = train_head(ctx, x_train, y_train, x_val, y_val)
    with torch.inference_mode():
        val_logits = linear(x_val)
    state = {f"backbone.{k}": v for k, v in ctx.models.backbone_state().items()}
    state.update({"head.weight": linear.weight.detach(), "head.bias": linear.bias.detach()})
    return Outcome(result, val_logits, state, {**facts, "network_built": ctx.models.built})


def _tick(bar, stats: engine.EpochStats, n: int = 1) -> None:
    bar.update(n)
    bar.set_postfix(loss=f"{stats.train_loss:.3f}", val_acc=f"{stats.val_acc:.3f}")


# -- fine-tuning ---------------------------------------------------------------------------------


class DecodedImages(Dataset):
    """Images decoded once, resized to the short side the crops need, kept as uint8 in the decode
    cache; item -> (uint8 (3, S, S) view, label). Training views are seeded per (image, epoch)."""

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

    def view(self, i: int, epoch: int) -> torch.Tensor:
        """Image i as seen in `epoch`: a random view seeded by (seed, image, epoch) for training,
        the center crop otherwise."""
        img = self.image(i)
        if self.train:
            view = transforms.train_view(img, self.pre, transforms.view_rng(self.seed, self.keys[i], epoch))
        else:
            view = transforms.center_crop(img, self.pre.input_size)
        return transforms.to_tensor(view)

    def __getitem__(self, i: int):
        return self.view(i, self.epoch), self.labels[i]


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


@dataclass
class NetworkSetup:
    """Everything needed to train the network on images for one strategy."""

    model: Classifier
    loader: DataLoader
    val_loader: DataLoader
    stages: list[list[str]]
    groups: list[dict]
    loss: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]


def network_setup(ctx: Context, head_init: nn.Linear | None = None) -> NetworkSetup:
    """Decode every image once into the cache, build loaders, initialize the head, and set what
    trains (param groups) for the strategy."""
    cfg, split, runtime, model = ctx.cfg, ctx.split, ctx.runtime, ctx.models.get()
    cache = decoded_cache(ctx.cache_root, ctx.pre)
    split.drop(decode_all(ctx, cache))
    split.check_not_empty()

    def dataset(samples, train):
        return DecodedImages([s.path for s in samples], [s.label for s in samples], ctx.pre, cache, train, cfg.seed)

    y_train = _labels(split.train)
    loader = train_loader(cfg, dataset(split.train, True), y_train, ctx.workers,
                          drop_last=len(split.train) > cfg.batch_size)
    val_loader = DataLoader(dataset(split.val, False), batch_size=cfg.batch_size, num_workers=ctx.workers)
    torch.manual_seed(cfg.seed)
    if head_init is not None:
        model.head.load_state_dict(head_init.state_dict())
    else:
        nn.init.normal_(model.head.weight, std=0.01)
        nn.init.zeros_(model.head.bias)
    runtime.train_module(model)
    stages = ctx.models.spec.stages(model.backbone)
    groups = param_groups(model, stages, cfg.strategy, cfg.lr, cfg.backbone_lr_mult, cfg.unfreeze, cfg.lr_decay)
    mean = torch.tensor(ctx.pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(ctx.pre.std).view(1, 3, 1, 1)
    return NetworkSetup(model, loader, val_loader, stages, groups, _loss(cfg, y_train, len(split.classes)),
                        lambda u8: runtime.to_input(u8, mean, std))


def train_network(ctx: Context, head_init: nn.Linear | None = None,
                  adapt: Callable[[NetworkSetup], NetworkSetup] | None = None) -> Outcome:
    """Train the network on images (finetune, partial, gradual, scratch, and the second step of
    LP-FT and the student of distill): decoded once into the cache, bf16 autocast + channels_last,
    what trains set by the strategy. `adapt` may change the loader and loss (distill)."""
    cfg, runtime = ctx.cfg, ctx.runtime
    net = network_setup(ctx, head_init)
    if adapt is not None:
        net = adapt(net)
    model, loader, stages, groups = net.model, net.loader, net.stages, net.groups
    peak_lrs = [{"name": g["name"], "lr": g["lr"]} for g in groups]  # before the schedule moves them
    optimizer = engine.make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = engine.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(loader)))
    before_epoch = None
    if cfg.strategy == "gradual":
        def before_epoch(epoch: int) -> None:
            unfreeze_top(model, stages, gradual_schedule(epoch, cfg.epochs, len(stages)))

    result, best = engine.fit(
        model, loader, net.val_loader, optimizer, scheduler, net.loss, runtime, net.prepare,
        cfg.epochs, cfg.patience,
        on_epoch=lambda s: ctx.log(
            f"epoch {s.epoch}: train loss {s.train_loss:.3f} acc {s.train_acc:.3f} | "
            f"val loss {s.val_loss:.3f} acc {s.val_acc:.3f} | {s.seconds:.1f}s"
        ),
        progress_factory=_epoch_bar(ctx, cfg.strategy), before_epoch=before_epoch,
        checkpoint=ctx.checkpoint, resume=ctx.resume,
    )
    model.load_state_dict(best)
    model.to("cpu").eval()
    # The reported accuracy is that of the saved model on the fast inference path.
    extractor = Extractor(model.backbone, ctx.pre, runtime, batch_size=32, workers=ctx.workers)
    feats = torch.cat([extractor.forward(u8) for u8, _ in net.val_loader])
    with torch.inference_mode():
        val_logits = model.head(feats)
    info = {"param_groups": peak_lrs,
            "stages": len(stages), "trainable_stages_at_end": sum(
                any(dict(model.backbone.named_parameters())[n].requires_grad for n in st) for st in stages)}
    return Outcome(result, val_logits, model.state_dict(), info)


def train_lp_ft(ctx: Context) -> Outcome:
    """LP-FT (Kumar et al., 2022): a linear probe on cached features, then fine-tuning of every
    layer starting from that head instead of a random one."""
    x_train, y_train, x_val, y_val, facts = cached_features(ctx)
    probe_hp = strategy_defaults("linear")
    probe, head = train_head(ctx, x_train, y_train, x_val, y_val, probe_hp)
    outcome = train_network(ctx, head_init=head)
    outcome.info.update(probe_val_acc=probe.best_val_acc, probe_steps=probe.best_epoch, probe_unit=probe.unit, **facts)
    return outcome


# -- distillation --------------------------------------------------------------------------------


class DistillLoss(nn.Module):
    """Hinton et al. (2015): alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels),
    the softmaxes at temperature T. Without teacher logits (validation) it is the cross-entropy."""

    def __init__(self, ce: nn.Module, temperature: float, alpha: float):
        super().__init__()
        self.ce, self.t, self.alpha = ce, temperature, alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None):
        ce = self.ce(logits, labels)
        if teacher is None:
            return ce
        kd = nn.functional.kl_div(nn.functional.log_softmax(logits / self.t, 1),
                                  nn.functional.log_softmax(teacher.float() / self.t, 1),
                                  reduction="batchmean", log_target=True)
        return self.alpha * self.t ** 2 * kd + (1 - self.alpha) * ce


class WithTeacher(Dataset):
    """A training dataset whose targets become (label, the teacher's logits for exactly this
    epoch's view of that image): `teacher_logits` is (epochs, N, C), row e for epoch e + 1."""

    def __init__(self, base: DecodedImages, teacher_logits: torch.Tensor):
        self.base, self.teacher_logits = base, teacher_logits

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, (label, self.teacher_logits[self.base.epoch - 1, i])


def check_teacher(teacher: str, classes: list[str]) -> None:
    """The teacher run must exist and know exactly these classes (in this order)."""
    from . import bundle

    meta, run_dir = bundle.read_meta(teacher)
    if meta.classes != classes:
        raise UserError(f"the teacher {run_dir} was trained on classes {', '.join(meta.classes)}; "
                        f"this dataset has {', '.join(classes)}")


class _ViewsOf(Dataset):
    """(row, image) pairs of a training dataset -> (epoch row + 1's augmented view, uint8; index)."""

    def __init__(self, base: DecodedImages, todo: list[tuple[int, int]]):
        self.base, self.todo = base, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int):
        e, i = self.todo[j]
        return self.base.view(i, e + 1), j


def teacher_logits(ctx: Context, train: DecodedImages) -> tuple[torch.Tensor, dict]:
    """The --teacher run's logits for every epoch's augmented view of every training image: the
    very crop the student sees, resized to the teacher's input size and normalized its way
    (consistent teaching: Beyer et al., 2022, "Knowledge distillation: a good teacher is patient
    and consistent"). Views are seeded by (seed, image, epoch), so the logits are cached per
    (teacher weights, student preprocessing, seed, image, epoch) and later runs reuse them.
    Returns (epochs, N, C) logits and facts for results.json."""
    import hashlib
    import json

    from . import bundle
    from .backbones import file_sha256

    check_teacher(ctx.cfg.teacher, ctx.split.classes)
    teacher, meta, run_dir = bundle.load(ctx.cfg.teacher)
    ident = json.dumps({"teacher": file_sha256(run_dir / "model.safetensors"), "student": ctx.pre.to_dict(),
                        "seed": ctx.cfg.seed, "precision": ctx.runtime.precision}, sort_keys=True)
    cache = ArrayCache(ctx.cache_root / "teacher" / hashlib.sha256(ident.encode()).hexdigest()[:24])
    epochs, n, classes = ctx.cfg.epochs, len(train), len(ctx.split.classes)
    out = torch.zeros(epochs, n, classes)
    todo = []
    for e in range(epochs):  # row e: the views of epoch e + 1 (epochs count from 1)
        for i, key in enumerate(train.keys):
            row = cache.get(key, f"e{e + 1}")
            if row is None or row.shape != (classes,):
                todo.append((e, i))
            else:
                out[e, i] = torch.from_numpy(row.copy())
    if todo:
        extractor = Extractor(teacher.backbone, meta.preprocess, ctx.runtime, batch_size=32, workers=ctx.workers)
        extractor.freeze = len(todo) >= 64
        head = teacher.head.float().eval()
        size = meta.preprocess.input_size
        bar = ctx.progress(len(todo), "teacher")
        for views, js in DataLoader(_ViewsOf(train, todo), batch_size=32, num_workers=ctx.workers):
            if views.shape[-1] != size:
                views = nn.functional.interpolate(views.float(), size=(size, size), mode="bilinear",
                                                  antialias=True, align_corners=False)
                views = views.round_().clamp_(0, 255).to(torch.uint8)
            with torch.inference_mode():
                logits = head(extractor.forward(views))
            for row, j in zip(logits, js.tolist()):
                e, i = todo[j]
                out[e, i] = row
                cache.put(train.keys[i], f"e{e + 1}", row.numpy())
            bar.update(len(js))
        bar.close()
    facts = {"teacher": str(run_dir), "teacher_backbone": meta.backbone,
             "teacher_views_cached": epochs * n - len(todo), "teacher_views_computed": len(todo),
             "temperature": ctx.cfg.temperature, "alpha": ctx.cfg.alpha}
    return out, facts


def train_distill(ctx: Context) -> Outcome:
    """Fine-tune the student (every layer, as `finetune`) on labels and the teacher's soft targets
    for the same augmented views."""
    facts: dict = {}

    def adapt(net: NetworkSetup) -> NetworkSetup:
        base = net.loader.dataset
        logits, more = teacher_logits(ctx, base)
        facts.update(more)
        net.loader = train_loader(ctx.cfg, WithTeacher(base, logits), _labels(ctx.split.train), ctx.workers,
                                  drop_last=net.loader.drop_last)
        net.loss = DistillLoss(net.loss, ctx.cfg.temperature, ctx.cfg.alpha)
        return net

    outcome = train_network(ctx, adapt=adapt)
    outcome.info.update(facts)
    return outcome


# -- automatic choice ----------------------------------------------------------------------------

# auto's thresholds. Measured (README, bench/strategies.py): on ~40-120 images per class, fine-tuning
# Lite0 for 4 epochs did not beat the linear head (flowers: 75.0 vs 84.5%; ants/bees: 96.1 vs 96.1%).
AUTO_MIN_PER_CLASS = 100  # fewer training images per class: fine-tuning mostly overfits
AUTO_PROBE_GOOD = 0.90  # cross-validated probe accuracy this high: the features already separate the classes


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, weight_decay: float, seed: int) -> float | None:
    """Cross-validated (up to 3 stratified folds, training images only) accuracy of the logistic
    regression probe: how well the frozen features separate the classes (a domain-gap signal).
    None when a class has fewer than 2 images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(3, int(torch.bincount(y).min()))
    if folds < 2:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / (weight_decay * len(y) * (folds - 1) / folds)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x.double().numpy(), y.numpy(), cv=cv).mean())


def choose_strategy(per_class: float, probe: float | None, finetune_s: Callable[[], float] | None,
                    budget: float | None) -> tuple[str, str]:
    """(strategy, reason) from the training images per class, the probe's accuracy and, with a
    budget, the estimated fine-tuning time (a callable: measured only when needed)."""
    probe_text = "n/a" if probe is None else f"{probe:.1%}"
    if probe is not None and probe >= AUTO_PROBE_GOOD:
        return "linear", (f"the frozen features already separate the classes (cross-validated probe accuracy "
                          f"{probe_text} >= {AUTO_PROBE_GOOD:.0%}): fine-tuning has little to add")
    if per_class < AUTO_MIN_PER_CLASS:
        return "linear", (f"{per_class:.0f} training images per class (< {AUTO_MIN_PER_CLASS}): too few to "
                          f"fine-tune without overfitting (probe accuracy {probe_text})")
    if budget is not None and finetune_s is not None:
        needed = finetune_s()
        if needed > budget:
            return "linear", (f"fine-tuning would take about {needed:.0f} s, over the {budget:.0f} s budget "
                              f"(probe accuracy {probe_text})")
    return "lp-ft", (f"{per_class:.0f} images per class and a domain gap (probe accuracy {probe_text} < "
                     f"{AUTO_PROBE_GOOD:.0%}): linear probe, then fine-tune every layer from it")


def estimate_finetune_seconds(ctx: Context, cfg: TrainConfig) -> float:
    """Epochs x training images x the measured time of one bf16/channels_last training step
    (3 steps of 8 images after a warm-up), plus one decode pass."""
    model = ctx.models.get()
    ctx.runtime.train_module(model)
    x = ctx.runtime.to_input(torch.randint(0, 255, (8, 3, ctx.pre.input_size, ctx.pre.input_size), dtype=torch.uint8),
                             torch.tensor(ctx.pre.mean).view(1, 3, 1, 1), torch.tensor(ctx.pre.std).view(1, 3, 1, 1))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        with ctx.runtime.autocast():
            model(x).float().sum().backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.to("cpu").eval()
    per_image = min(times[1:]) / 8
    return cfg.epochs * len(ctx.split.train) * per_image * 1.15 + 0.003 * len(ctx.split.train) / max(1, ctx.workers)


def _as(cfg: TrainConfig, strategy: str) -> TrainConfig:
    """auto's options resolved for `strategy`; an --optimizer lbfgs (linear heads only) is dropped
    for a network strategy."""
    drop = {"optimizer": None} if strategy != "linear" and cfg.optimizer == "lbfgs" else {}
    return dataclasses.replace(cfg, strategy=strategy, **drop).resolved()


def train_auto(ctx: Context) -> Outcome:
    """Choose a strategy from the data (and --budget), say why, and train with it."""
    x_train, y_train, _, _, _ = cached_features(ctx)
    n = len(ctx.split.train)
    per_class = n / len(ctx.split.classes)
    probe = probe_accuracy(x_train[:n], y_train[:n], strategy_defaults("linear")["weight_decay"], ctx.cfg.seed)
    chosen, reason = choose_strategy(per_class, probe, lambda: estimate_finetune_seconds(ctx, _as(ctx.cfg, "lp-ft")),
                                     ctx.cfg.budget)
    ctx.log(f"auto: {chosen}, because {reason}")
    ctx.cfg = _as(ctx.cfg, chosen)
    outcome = STRATEGIES[chosen](ctx)
    outcome.info.update(strategy_reason=reason, probe_cv_accuracy=probe, images_per_class=per_class)
    return outcome


STRATEGIES: dict[str, Callable[[Context], Outcome]] = {
    "linear": train_linear,
    "finetune": train_network,
    "partial": train_network,
    "gradual": train_network,
    "lp-ft": train_lp_ft,
    "scratch": train_network,
    "distill": train_distill,
    "auto": train_auto,
}
