"""auto: choose between the linear head and LP-FT from the data (and --budget), say why, and
train with the choice. The decision uses what is cheap to measure: the cached features'
cross-validated probe accuracy, the training images per class, and timed training steps."""

from __future__ import annotations

from typing import Callable

from .base import STRATEGIES, Strategy, register

# auto's thresholds. Measured (README, bench/strategies.py): on ~40-120 images per class, fine-tuning
# Lite0 for 4 epochs did not beat the linear head (flowers: 75.0 vs 84.5%; ants/bees: 96.1 vs 96.1%).
AUTO_MIN_PER_CLASS = 100  # fewer training images per class: fine-tuning mostly overfits
AUTO_PROBE_GOOD = 0.90  # cross-validated probe accuracy this high: the features already separate the classes


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


def run(ctx):
    import dataclasses

    from ..heads import probe_accuracy
    from ..network import estimate_finetune_seconds

    f = ctx.cached_features()
    n = f.num_images
    per_class = n / len(f.split.classes)
    probe = probe_accuracy(f.x_train[:n], f.y_train[:n], STRATEGIES.get("linear").defaults_for("lbfgs")["weight_decay"],
                           ctx.cfg.seed)
    chosen, reason = choose_strategy(per_class, probe,
                                     lambda: estimate_finetune_seconds(ctx, ctx.cfg.for_strategy("lp-ft")),
                                     ctx.cfg.budget)
    ctx.console.info(f"auto: {chosen}, because {reason}")
    outcome = STRATEGIES.get(chosen).run(dataclasses.replace(ctx, cfg=ctx.cfg.for_strategy(chosen)))
    outcome.info.update(strategy_reason=reason, probe_cv_accuracy=probe, images_per_class=per_class)
    return outcome


register(Strategy(
    name="auto", order=7, run=run, trains="chosen", uses_features=True,
    summary="chosen from the data and --budget; the choice and its reason go to the console and results.json",
    # the options of its candidates (resolved for the one chosen) and its own
    options=("aug_views", "backbone_lr_mult", "budget"), defaults={"aug_views": 0},
    optimizers=("lbfgs", "adamw", "adam", "sgd"),
))
