"""Training the network on images: what trains at which learning rate (`param_groups`), the
loaders over the decode cache (`network_setup`) and the epoch loop around them (`train_network`),
shared by every strategy that trains more than the head."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..cache import parse_size
from ..data.datasets import DecodedImages, decode_all, labels_of, train_loader
from ..data.decode import typical_short_side
from ..data.views import SMALL
from ..data.discover import DatasetSplit
from ..distributed import sync_batchnorm
from ..folds import stratified_sample
from ..ood import reference_rows
from ..models.classifier import Classifier
from ..runtime import Extractor
from . import loop, recipe, subscribers
from .context import Context, Outcome
from .losses import classification_loss
from .result import LinearHead
from .strategies.base import STRATEGIES, Strategy


def param_groups(model: Classifier, stages: list[list[str]], strategy: Strategy | str, lr: float,
                 backbone_lr_mult: float = 0.1, unfreeze: int = 2, lr_decay: float = 0.5,
                 layer_decay: float = 1.0, layers: list[list[str]] | None = None) -> list[dict]:
    """Set what trains as `strategy` declares it (requires_grad), keep BatchNorm of frozen parts
    in eval mode, and return the optimizer's parameter groups (only trainable parameters, except
    under "gradual", whose stage groups are unfrozen later by `unfreeze_top`).

    trains "head": the head alone. "all": everything, the backbone at `backbone_lr` ("scaled":
    lr * backbone_lr_mult; "same": lr). "top": the head and the last `unfreeze` stages.
    "gradual": one group per stage, its LR lr * backbone_lr_mult * lr_decay**(distance from the
    top stage); all frozen at first. `layer_decay` < 1 ("all", "top"): the backbone's trainable
    parameters in one group per layer of `layers` (input to output), layer i of L at backbone_lr *
    layer_decay**(L - i) (timm's convention: the top layer at layer_decay, the head, layer L, at lr)."""
    entry = STRATEGIES.get(strategy) if isinstance(strategy, str) else strategy
    params = dict(model.backbone.named_parameters())
    trainable = {"head": 0, "top": min(unfreeze, len(stages)), "gradual": 0}.get(entry.trains, len(stages))
    for i, stage in enumerate(stages):
        for name in stage:
            params[name].requires_grad_(i >= len(stages) - trainable)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.refresh_frozen_norms(entry.batchnorm == "frozen")
    head = {"params": list(model.head.parameters()), "lr": lr, "name": "head"}
    if entry.trains == "gradual":
        n = len(stages)
        groups = [{"params": [params[k] for k in stage], "lr": lr * backbone_lr_mult * lr_decay ** (n - 1 - i),
                   "name": f"stage{i}"} for i, stage in enumerate(stages)]
        return groups + [head]
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    body_lr = lr if entry.backbone_lr == "same" else lr * backbone_lr_mult
    if layer_decay < 1 and body:
        if layers is None:
            raise ValueError("layer-wise decay needs the backbone's layers")
        groups = [{"params": [params[k] for k in layer if params[k].requires_grad],
                   "lr": body_lr * layer_decay ** (len(layers) - i), "name": f"layer{i}"}
                  for i, layer in enumerate(layers)]
        return [g for g in groups if g["params"]] + [head]
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


def _epoch_bar(console, desc: str, epochs: int):
    def factory(epoch: int, steps: int):
        return console.progress(steps, f"{desc} epoch {epoch}/{epochs}")
    return factory


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
    split: DatasetSplit  # the split less the images that could not be decoded
    # training images in the evaluation view (a stratified sample of at most ood.MAX_REFERENCE):
    # the kept network's features of them are its out-of-distribution score's reference
    reference_loader: DataLoader | None = None
    # the training images held out of training to calibrate the kept network on (`held_out`)
    calibration_loader: DataLoader | None = None
    held_out: list = field(default_factory=list)


def network_setup(ctx: Context, head_init: LinearHead | None = None, split: DatasetSplit | None = None,
                  held: list | None = None) -> NetworkSetup:
    """Decode every image of `split` (default: the context's) once into the cache, build
    loaders, initialize the head, and set what trains (param groups) as the strategy declares.
    In a group the ranks of each node decode a share each into the node's cache, and the
    unreadable files found are exchanged; the training loader gives each rank its share of
    every epoch, the val loader its share of the val images."""
    cfg, runtime, model, group = ctx.cfg, ctx.runtime, ctx.models.get(), ctx.group
    cache = ctx.cache.decoded(ctx.pre.resize_size, ctx.pre.interpolation, parse_size(cfg.cache_limit))
    split = split or ctx.split
    held = held or []  # (training images held out to calibrate on: decoded too, not trained on)
    samples = split.train + split.val + held
    errors = decode_all([samples[i] for i in group.node_share(len(samples))], cache, ctx.pre, ctx.console.progress)
    if group.distributed:
        errors = {path: reason for part in group.all_gather(errors) for path, reason in part.items()}
    split = split.without(errors)
    split.check_not_empty()
    held = [s for s in held if s.path not in errors]

    small = is_small(split)

    def dataset(samples, train):
        # (multi-label: each image's (C,) 0/1 row)
        labels = list(split.targets(samples)) if split.task.multi else [s.label for s in samples]
        return DecodedImages([s.path for s in samples], labels, ctx.pre, cache, train, cfg.seed,
                             small, cfg.augment or "basic", recipe.strong_epochs(cfg.epochs))

    y_train = labels_of(split.train)  # (multi-label: each image's stratum, which the class-balanced sampler draws by)
    per_rank = -(-len(split.train) // group.world)
    loader = train_loader(dataset(split.train, True), y_train, cfg.batch_size, cfg.seed, cfg.balanced_sampler,
                          ctx.workers, drop_last=per_rank > cfg.batch_size, group=group)
    val_loader = DataLoader(dataset(split.val, False), batch_size=cfg.batch_size, num_workers=ctx.workers,
                            sampler=list(group.share(len(split.val))))
    _start_training(model, head_init, cfg.seed, runtime, cfg.sync_bn and group.distributed)
    stages = ctx.models.spec.stages(model.backbone)
    layer_decay = cfg.layer_decay or 1.0
    layers = ctx.models.spec.stages(model.backbone, fine=True) if layer_decay < 1 else None
    groups = param_groups(model, stages, ctx.strategy, cfg.lr, cfg.backbone_lr_mult or 1.0, cfg.unfreeze or 0,
                          cfg.lr_decay or 1.0, layer_decay, layers)
    mean = torch.tensor(ctx.pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(ctx.pre.std).view(1, 3, 1, 1)
    if ctx.parent is not None and head_init is None:  # --from: RUN's network, the new classes' rows imprinted
        def mean_features(names: list[str]) -> np.ndarray:  # (class_means counts only those classes' rows)
            return class_means(model, DataLoader(dataset(split.train, False), batch_size=cfg.batch_size,
                                                 num_workers=ctx.workers), [split.classes.index(c) for c in names],
                               lambda u8: runtime.to_input(u8, mean, std), runtime)

        ctx.console.info(ctx.parent.start(model, mean_features))
    loss = classification_loss(cfg, torch.from_numpy(split.targets(split.train)) if split.task.multi else y_train,
                               len(split.classes))
    reference = reference_rows(len(y_train), y_train.numpy(), cfg.seed)
    reference_loader = DataLoader(dataset([split.train[i] for i in reference], False), batch_size=cfg.batch_size,
                                  num_workers=ctx.workers)
    calibration_loader = DataLoader(dataset(held, False), batch_size=cfg.batch_size, num_workers=ctx.workers) \
        if held else None
    return NetworkSetup(model, loader, val_loader, stages, groups, loss,
                        lambda u8: runtime.to_input(u8, mean, std), split, reference_loader, calibration_loader, held)


def _start_training(model, head_init: LinearHead | None, seed: int, runtime, sync_bn: bool) -> None:
    """The new head's first weights (`head_init`'s, or small random ones drawn from `seed`), the
    model put in training mode on the runtime, and its BatchNorm synchronized across the group."""
    torch.manual_seed(seed)
    if head_init is not None:
        model.head.load_state_dict({"weight": torch.from_numpy(head_init.weight), "bias": torch.from_numpy(head_init.bias)})
    else:
        nn.init.normal_(model.head.weight, std=0.01)
        nn.init.zeros_(model.head.bias)
    runtime.train_module(model)
    if sync_bn:
        sync_batchnorm(model)


def class_means(model, loader: DataLoader, labels: list[int], to_input, runtime) -> np.ndarray:
    """(K, D) mean backbone features of the images of each class in `labels` that `loader` gives
    (evaluation views), the network in eval mode for the pass (then back in training mode)."""
    sums = {c: None for c in labels}
    counts = dict.fromkeys(labels, 0)
    model.eval()
    try:
        with torch.no_grad(), runtime.autocast():
            for u8, y in loader:
                f = model.backbone(to_input(u8)).float().cpu()
                for c in labels:  # (multi-label: y holds each image's 0/1 row)
                    rows = f[y[:, c] > 0] if y.ndim == 2 else f[y == c]
                    if len(rows):
                        sums[c] = rows.sum(0) if sums[c] is None else sums[c] + rows.sum(0)
                        counts[c] += len(rows)
    finally:
        model.train()
    return np.stack([(sums[c] / max(counts[c], 1)).numpy() if sums[c] is not None else
                     np.zeros(model.head.weight.shape[1], np.float32) for c in labels])


def is_small(split: DatasetSplit) -> bool:
    """Whether the split's images are small (typical short side <= views.SMALL), whatever size
    the network sees them at."""
    side = split.image_size or typical_short_side([s.path for s in split.train])
    return side is not None and side <= SMALL


def train_network(ctx: Context, head_init: LinearHead | None = None,
                  adapt: Callable[[NetworkSetup], NetworkSetup] | None = None,
                  split: DatasetSplit | None = None) -> Outcome:
    """Train the network on images (finetune, partial, gradual, scratch, and the second step of
    LP-FT and the student of distill): decoded once into the cache, bf16 autocast + channels_last,
    what trains set as the strategy declares. `adapt` may change the loader and loss (distill);
    `split` replaces the context's (LP-FT: the one its probe was fitted on)."""
    cfg, runtime, group = ctx.cfg, ctx.runtime, ctx.group
    split = split or ctx.split
    held = held_out(split, cfg.seed)
    if held:
        ctx.console.info(f"calibration: {len(held)} of the {len(split.train)} training images held out of training, "
                         "to calibrate the network on")
        kept = {s.path for s in held}
        split = replace(split, train=[s for s in split.train if s.path not in kept])
    net = network_setup(ctx, head_init, split, held)
    if adapt is not None:
        net = adapt(net)
    model, loader = net.model, net.loader
    peak_lrs = [{"name": g["name"], "lr": g["lr"]} for g in net.groups]  # before the schedule moves them
    optimizer = loop.make_optimizer(cfg.optimizer, net.groups, cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = loop.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(loader)))
    step = loop.Step(model, optimizer, scheduler, net.loss, runtime, net.prepare,
                     recipe.batch_mixer(cfg.mixup, cfg.cutmix, len(net.split.classes)), recipe.strong_epochs(cfg.epochs),
                     group.replicate(runtime.device) if group.distributed else None)
    average = recipe.WeightAverage(model, cfg.ema, steps) if cfg.ema else None
    measure = ValMeasure(ctx, net)
    result, best = loop.fit(step, loader, net.val_loader, cfg.epochs, _subscribers(ctx, net, average),
                            measure, group, ctx.resume)
    model.load_state_dict(best)
    _, _, val_logits = measure(model)  # the kept epoch's logits, as its row in metrics.csv measured them
    ood = val_ood = temperature = thresholds = None
    if group.primary:  # (the kept network, on the path `predict` runs it: one copy for both passes)
        kept = Extractor(model.backbone, ctx.pre, runtime, batch_size=32)
        ood, val_ood = network_ood(net, model, kept, measure.features)
        temperature, thresholds = calibrate(net, model, kept)
    model.to("cpu").eval()
    info = _network_info(cfg, group, net, peak_lrs, average)
    return Outcome(result, val_logits, model.state_dict(), net.split, cfg, info, ood=ood, val_ood=val_ood,
                   temperature=temperature, thresholds=thresholds)


def _subscribers(ctx: Context, net: NetworkSetup, average: recipe.WeightAverage | None) -> list[loop.Subscriber]:
    """What follows the network's training loop, in the order each event reaches them."""
    cfg = ctx.cfg
    found: list[loop.Subscriber] = []
    if ctx.deadline is not None:
        found.append(subscribers.Budget(ctx.deadline))
    if ctx.strategy.trains == "gradual":
        model, stages = net.model, net.stages
        found.append(subscribers.EpochStart(
            lambda epoch: unfreeze_top(model, stages, gradual_schedule(epoch, cfg.epochs, len(stages)))))
    found.append(subscribers.EpochBars(_epoch_bar(ctx.console, cfg.strategy, cfg.epochs)))
    if average is not None:
        found.append(subscribers.Averaging(average))
    return [*found, subscribers.Checkpointing(ctx.checkpoint), subscribers.EpochEnd(lambda s: _epoch_ended(ctx, s)),
            subscribers.EarlyStop(cfg.patience)]


def _network_info(cfg, group, net: NetworkSetup, peak_lrs: list[dict], average) -> dict:
    """What results.json records of the network's training: its param groups' peak rates, the
    batch, the stages (trainable at the end), the weight average's decay, the calibration images."""
    model = net.model
    trainable = dict(model.backbone.named_parameters())
    info = {"param_groups": peak_lrs,
            "batch": {"per_process": cfg.batch_size, "processes": group.world, "global": cfg.batch_size * group.world,
                      "lr": cfg.lr, "sync_bn": bool(cfg.sync_bn) and group.distributed},
            "stages": len(net.stages),
            "trainable_stages_at_end": sum(any(trainable[n].requires_grad for n in st) for st in net.stages)}
    if average is not None:
        info["ema_decay"] = average.decay  # the decay used: --ema, bounded by the run's length
    info["calibration_images"] = len(net.held_out)
    return info


class ValMeasure:
    """Val loss, accuracy and logits of a network on the path the saved model is used on
    (BatchNorm folded, the compute dtype's weights: `Extractor`, as `predict` and `eval` run it).
    Measured so every epoch, the kept epoch's row in metrics.csv is what its bundle scores;
    autocast numerics differ enough to flip borderline images between the two paths. `features`:
    the last measured val features (in a group: every rank's, in order)."""

    def __init__(self, ctx: Context, net: NetworkSetup):
        self.ctx, self.net = ctx, net
        self.y_val = torch.from_numpy(net.split.targets(net.split.val))
        self.features: list[torch.Tensor] = []

    def __call__(self, m: Classifier) -> tuple[float, float, torch.Tensor]:
        net, group, y_val = self.net, self.ctx.group, self.y_val
        was_training = m.training
        extractor = Extractor(m.backbone, self.ctx.pre, self.ctx.runtime, batch_size=32)
        feats = [extractor.forward(u8) for u8, _ in net.val_loader]
        self.features = feats  # (a group's: each rank's share, put in order below)
        with torch.inference_mode():
            weight, bias = m.head.weight.detach().float().cpu(), m.head.bias.detach().float().cpu()
            logits = nn.functional.linear(torch.cat(feats), weight, bias) if feats else torch.empty(0, len(bias))
            if group.distributed:  # each rank measured its share: every rank gets them all, in order
                logits = self._in_order(logits, len(bias))
                last = getattr(m.backbone, "last_features", None) or len(weight[0])
                mine = torch.cat(feats)[:, :last].float() if feats else torch.empty(0, last)
                self.features = [self._in_order(mine, last)]
            loss = float(net.loss(logits, y_val))
        m.train(was_training)
        return loss, net.split.task.score(logits.numpy(), y_val.numpy()), logits

    def _in_order(self, mine: torch.Tensor, width: int) -> torch.Tensor:
        """Every rank's rows of the val images (`mine`: this rank's share), in their order."""
        every = torch.empty(len(self.y_val), width)
        for rows, part in self.ctx.group.all_gather((self.net.val_loader.sampler, mine)):
            every[rows] = part
        return every


# Fine-tuned networks are calibrated on training images held out of their training (the head on
# frozen features uses its out-of-fold predictions instead): CALIBRATION_SHARE of them, a
# stratified sample of at most CALIBRATION_MAX, where that is at least CALIBRATION_MIN_IMAGES and
# every class keeps CALIBRATION_MIN_PER_CLASS to train on (else nothing is held out and the
# network is not calibrated: a temperature fitted on 8 held-out images sharpened to 0.05 and
# doubled the val NLL; one scalar needs some 50 images to be trusted).
CALIBRATION_SHARE, CALIBRATION_MAX, CALIBRATION_MIN_IMAGES, CALIBRATION_MIN_PER_CLASS = 0.1, 1000, 50, 20


def held_out(split: DatasetSplit, seed: int) -> list:
    """The training images held out to calibrate a fine-tuned network on (`CALIBRATION_SHARE`)."""
    from ..task import strata_of

    if not split.train:
        return []
    strata = strata_of(split.targets(split.train))
    if split.label_counts(split.train).min() < CALIBRATION_MIN_PER_CLASS:
        return []
    size = min(CALIBRATION_MAX, int(len(strata) * CALIBRATION_SHARE))
    if size < max(CALIBRATION_MIN_IMAGES, len(np.unique(strata))):
        return []
    return [split.train[i] for i in stratified_sample(strata, size, seed + 1)]


def calibrate(net: NetworkSetup, model: Classifier, extractor: Extractor):
    """(temperature, thresholds) of the kept network from its logits of the held-out training
    images: single-label, the temperature (`task.fit_temperature`), kept where it lowers their
    log loss by TEMPERATURE_MIN_GAIN and is not at the end of its range (separable held-out
    images: no estimate); multi-label, each class's F1-optimal threshold. (None, None) with
    nothing held out."""
    from ..task import TEMPERATURE_RANGE, choose_thresholds, fit_temperature, log_loss, sigmoid
    from .heads import TEMPERATURE_MIN_GAIN

    if net.calibration_loader is None:
        return None, None
    with torch.inference_mode():
        weight, bias = model.head.weight.detach().float().cpu(), model.head.bias.detach().float().cpu()
        logits = torch.cat([nn.functional.linear(extractor.forward(u8).float(), weight, bias)
                            for u8, _ in net.calibration_loader]).numpy().astype(np.float64)
    y = net.split.targets(net.held_out)
    if net.split.task.multi:
        return None, choose_thresholds(y, sigmoid(logits))
    temperature = fit_temperature(y, logits)
    before, after = log_loss(y, logits, 1.0), log_loss(y, logits, temperature)
    inside = TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01
    return (temperature if inside and before - after >= TEMPERATURE_MIN_GAIN * before else None), None


def network_ood(net: NetworkSetup, model: Classifier, extractor: Extractor, val_features: list[torch.Tensor]):
    """(`ood.Ood`, the val images' scores) of the kept network: its features (the last layer's) of
    the reference sample of training images, as predict computes them (in a group, on the
    primary: the val features gathered by `measure`)."""
    from ..ood import Ood, thresholded

    if net.reference_loader is None:
        return None, None
    with torch.inference_mode():
        train_x = [extractor.forward(u8).float() for u8, _ in net.reference_loader]
    last = getattr(model.backbone, "last_features", None) or model.head.in_features
    width = slice(0, last)
    train_x = torch.cat(train_x)[:, width].numpy() if train_x else torch.zeros(0, last).numpy()
    val_x = torch.cat(val_features).float()[:, width].numpy() if val_features else torch.zeros(0, last).numpy()
    return thresholded(Ood.of_rows(train_x), val_x) if len(train_x) else (None, None)


def _epoch_ended(ctx: Context, s) -> None:
    ctx.console.info(f"epoch {s.epoch}: train loss {s.train_loss:.3f} acc {s.train_acc:.3f} | "
                     f"val loss {s.val_loss:.3f} acc {s.val_acc:.3f} | {s.seconds:.1f}s")
    if ctx.observe is not None:
        ctx.observe(s)


@dataclass
class FinetuneCost:
    """What fine-tuning is estimated to cost, in seconds (`estimate_finetune_cost`)."""

    per_epoch: float  # a training pass over the training images and the val measurement after it
    decode: float  # decoding every image once into the cache

    def seconds(self, epochs: int) -> float:
        return epochs * self.per_epoch + self.decode


def estimate_finetune_cost(ctx: Context) -> FinetuneCost:
    """From the measured time of one training step in the runtime's precision (3 steps of 8
    images after a warm-up): an epoch is the training images x that step's time per image x 1.15
    (loading, the optimizer) plus the val images' forward pass (a third of a training step's time
    each); decoding the images once, 3 ms an image per worker."""
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
    n_train, n_val = len(ctx.split.train), len(ctx.split.val)
    return FinetuneCost(n_train * per_image * 1.15 + n_val * per_image / 3,
                        0.003 * (n_train + n_val) / max(1, ctx.workers))
