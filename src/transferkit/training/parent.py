"""Start from a finished run (`transferkit train DATA --from RUN`): its backbone and settings, and
for the strategies that train the network (finetune, partial, gradual) its weights.

- The settings are RUN's config.yaml with the options given now on top; what belongs to RUN's
  data or folder (`NOT_INHERITED`: the labels table, exclusions, fixes, the output folder, ...)
  is not carried over.
- `linear` refits its head on every image: the feature cache already holds the old images'
  features, so only new images are extracted.
- The network strategies start from RUN's network (with RUN's strategy: a quarter of its epochs
  at 0.3x its learning rate, unless given): the backbone's weights, the head rows of the
  classes DATA still has (matched by name), and each new class's row started from the mean of
  its training images' features under RUN's backbone, scaled to the old rows' mean norm
  ("imprinting": Qi et al., CVPR 2018, "Low-shot learning with imprinted weights"), centred: the
  direction from the centre of all classes' means to the class's own, with the bias that makes
  its logit at that centre the kept classes' mean logit there (pooled features are >= 0, so
  uncentred means all point alike and a new class would take images from every old one).
  `bench/continue_run.py` measures that against a random start and against retraining from the
  ImageNet weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from .options import applies, read_saved
from ..errors import UserError
from ..files import shown

CONTINUES = ("finetune", "partial", "gradual")  # the strategies that continue RUN's network
REFITS = ("linear",)  # those that refit a head on (cached) features: RUN's settings only
# What is RUN's data's or folder's, not a setting to carry over
NOT_INHERITED = ("data", "labels", "path_col", "label_col", "split_col", "exclude", "fixes", "add", "cache_dir", "no_cache",
                 "cache_limit", "out", "runs_dir", "name", "quiet", "resume", "from_run", "no_report", "workers")
NEW_ROWS = "imprint"  # how a new class's head row starts: "imprint" | "random" (bench/continue_run.py)
# A network that continues RUN's (same strategy, neither option given): a quarter of RUN's epochs
# at 0.3x its learning rate, as lp-ft's second stage starts from a fitted head at 3e-4 rather than
# finetune's 1e-3. Measured (bench/continue_run.py, flowers, a class added, 2 seeds): RUN's
# learning rate lost 3.1 points on the old classes against retraining, 0.3x lost 0.3.
CONTINUE_EPOCHS_DIVISOR = 4
CONTINUE_LR_FACTOR = 0.3


def parent_dir(run: str | Path) -> Path:
    """RUN's folder, checked to be a finished run (model.json and config.yaml); one line if not."""
    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"--from {shown(run)}: no such run folder")
    if not (run_dir / "model.json").is_file():
        if (run_dir / "checkpoint.pt").is_file():
            raise UserError(f"--from {shown(run)}: this run is unfinished; finish it first with "
                            f"`transferkit train --resume {shown(run)}`")
        raise UserError(f"--from {shown(run)}: not a finished run (it has no model.json)")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--from {shown(run)}: the run has no config.yaml (its settings are unknown)")
    return run_dir


def continue_config(run: str | Path, data: str, given: dict) -> TrainConfig:
    """RUN's settings (its config.yaml) with `given` (the options set now) on top, for DATA. With
    another --strategy than RUN's, what strategies set (epochs, LR, optimizer, their own options)
    is the new strategy's, not RUN's; a setting of RUN's that the strategy does not take is dropped.
    RUN's network continued with its own strategy: CONTINUE_EPOCHS_DIVISOR fewer epochs and
    CONTINUE_LR_FACTOR its learning rate, each unless given."""
    from ..models.bundle import read_meta
    from .strategies.base import STRATEGIES

    run_dir = parent_dir(run)
    meta, _ = read_meta(run_dir)  # (a damaged or foreign model.json: one line)
    saved = read_saved(run_dir / "config.yaml").to_dict()
    model = given.get("model")
    if model is not None and model != saved.get("model"):
        raise UserError(f"--from {shown(run)}: that run's backbone is {meta.backbone}, not --model {model}; leave "
                        "--model out to continue it, or train without --from")
    strategy = STRATEGIES.get(given.get("strategy") or saved["strategy"])
    skip = set(NOT_INHERITED)
    if strategy.name != saved["strategy"]:  # RUN's values of what its strategy set (epochs, lr, optimizer...) are
        skip |= {k for s in STRATEGIES for k in s.defaults_for(None)} | {k for s in STRATEGIES for k in s.options}
        skip |= {k for s in STRATEGIES for o in s.optimizers for k in s.defaults_for(o)}
    optimizer = given.get("optimizer", None if "optimizer" in skip else saved.get("optimizer"))
    inherited = {k: v for k, v in saved.items()
                 if k not in skip and k not in given and v is not None
                 and (k == "strategy" or applies(k, strategy, optimizer))}
    if strategy.name in CONTINUES and strategy.name == saved["strategy"]:  # RUN's network goes on: shorter, gentler
        if "epochs" not in given and inherited.get("epochs"):
            inherited["epochs"] = max(1, -(-inherited["epochs"] // CONTINUE_EPOCHS_DIVISOR))
        if "lr" not in given and inherited.get("lr"):
            inherited["lr"] = inherited["lr"] * CONTINUE_LR_FACTOR
    if strategy.name not in CONTINUES + REFITS:
        raise UserError(f"--from continues a run with --strategy {', '.join(CONTINUES)} (its network) or "
                        f"{', '.join(REFITS)} (a head refitted on every image), not {strategy.name}: train without "
                        "--from")
    return TrainConfig.from_mapping({**inherited, **given, "strategy": strategy.name, "data": data,
                                     "from_run": str(run_dir.absolute())})


@dataclass(frozen=True)
class Parent:
    """The run a new one starts from, matched against the new run's classes."""

    run_dir: Path
    classes: list[str]  # RUN's
    new_classes: list[str]  # the new run's

    @classmethod
    def of(cls, cfg: TrainConfig, classes: list[str], multi: bool) -> "Parent | None":
        """The parent of a run with options `cfg` (None without --from), checked against its data."""
        if cfg.from_run is None:
            return None
        from ..models.bundle import read_meta

        meta, run_dir = read_meta(parent_dir(cfg.from_run))
        if meta.backbone != cfg.model:
            raise UserError(f"--from {shown(cfg.from_run)}: that run's backbone is {meta.backbone}, not {cfg.model}")
        if meta.task.multi != multi:
            kinds = ("multi-label", "single-label")
            raise UserError(f"--from {shown(cfg.from_run)}: that run is {kinds[not meta.task.multi]} and this data "
                            f"is {kinds[not multi]}: train without --from")
        return cls(run_dir, list(meta.classes), list(classes))

    @property
    def kept(self) -> list[str]:
        return [c for c in self.new_classes if c in self.classes]

    @property
    def added(self) -> list[str]:
        return [c for c in self.new_classes if c not in self.classes]

    @property
    def dropped(self) -> list[str]:
        return [c for c in self.classes if c not in self.new_classes]

    def record(self, strategy: str) -> dict:
        """results.json's `parent`."""
        return {"run": str(self.run_dir.absolute()), "continued": "network" if strategy in CONTINUES else "settings",
                "classes_kept": self.kept, "classes_added": self.added, "classes_dropped": self.dropped,
                "new_rows": NEW_ROWS if strategy in CONTINUES and self.added else None}

    def lines(self, strategy: str) -> list[str]:
        """What the run says about its parent."""
        what = "its network" if strategy in CONTINUES else "its settings (the head refitted on every image)"
        out = [f"from {self.run_dir}: {what}; {len(self.kept)} of its classes kept"
               + (f", {len(self.added)} new: {', '.join(self.added)}" if self.added else "")]
        if self.dropped:
            out.append(f"warning: {len(self.dropped)} of {self.run_dir.name}'s classes are not in this data (renamed or "
                       f"removed), their head rows dropped: {', '.join(self.dropped)}")
        return out

    def start(self, model, mean_features) -> str:
        """Load RUN's network into `model` (the new run's classifier): the backbone (a fine-tuned
        run's; a frozen one's is the same ImageNet network already), the rows of the kept classes,
        new rows as NEW_ROWS says. `mean_features(class names)` -> (K, D) mean features of those
        classes' training images under the loaded backbone (asked for every class of the new
        run). Returns a line saying what started where."""
        import torch

        from ..models.bundle import load, read_meta

        meta, _ = read_meta(self.run_dir)
        old, _, _ = load(self.run_dir)
        if meta.frozen_features is None:  # a fine-tuned backbone: continue it
            model.backbone.load_state_dict(old.backbone.state_dict())
        w_old, b_old = old.head.weight.detach(), old.head.bias.detach()
        same_width = w_old.shape[1] == model.head.weight.shape[1]  # (a linear run's head on multi-layer features: not)
        rows = {c: i for i, c in enumerate(self.classes)} if same_width else {}
        fresh = [c for c in self.new_classes if c not in rows]
        with torch.no_grad():
            weight, bias = model.head.weight, model.head.bias
            for i, c in enumerate(self.new_classes):
                if c in rows:
                    weight[i].copy_(w_old[rows[c]])
                    bias[i].copy_(b_old[rows[c]])
            if fresh and NEW_ROWS == "imprint":
                means = torch.as_tensor(np.asarray(mean_features(self.new_classes)), dtype=weight.dtype,
                                        device=weight.device)
                centre = means.mean(0)  # (the features are >= 0: uncentred, every class's mean points alike)
                kept = [i for i, c in enumerate(self.new_classes) if c in rows]
                norm = weight[kept].norm(dim=1).mean() if kept else weight.new_tensor(1.0)
                level = (weight[kept] @ centre + bias[kept]).mean() if kept else weight.new_tensor(0.0)
                for c in fresh:
                    i = self.new_classes.index(c)
                    direction = means[i] - centre
                    weight[i].copy_(direction / direction.norm().clamp_min(1e-12) * norm)
                    bias[i].copy_(level - weight[i] @ centre)  # at the average image, as likely as the kept classes
        kept = len(self.new_classes) - len(fresh)
        return (f"started from {self.run_dir.name}'s network: {kept} head row(s) kept"
                + (f", {len(fresh)} started from their images' mean features" if fresh and NEW_ROWS == "imprint"
                   else f", {len(fresh)} random" if fresh else ""))
