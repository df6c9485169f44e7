"""auto: choose between the linear head and LP-FT by measurement, say why, and keep the better.

What is cheap is measured first: the cross-validated accuracy of the best head on the cached
features (last and multi-layer, `heads.select_head`). Fine-tuning (LP-FT) runs only when that
leaves room, there are enough images per class, and (with --budget) its timed training steps fit;
LP-FT then keeps the fine-tuned network only if it beats the head on the same val images.
"""

from __future__ import annotations

from typing import Callable

from .base import STRATEGIES, Strategy, register

# auto's thresholds. Fine-tuning that does not pay costs only time (LP-FT keeps its probe then).
AUTO_HEAD_GOOD = 0.97  # the head's cross-validated accuracy this high: fine-tuning has little to win
AUTO_MIN_PER_CLASS = 30  # fewer training images per class: fine-tuning mostly overfits (README, bench/accuracy.py)


def choose_strategy(per_class: float, head_cv: float | None, finetune_s: Callable[[], float] | None,
                    budget: float | None) -> tuple[str, str]:
    """(strategy, reason) from the training images per class, the best head's cross-validated
    accuracy and, with a budget, the estimated fine-tuning time (a callable: measured only when
    needed)."""
    cv = "not measurable" if head_cv is None else f"{head_cv:.1%}"
    if head_cv is None:
        return "linear", "a class has a single training image: nothing to cross-validate or fine-tune on"
    if head_cv >= AUTO_HEAD_GOOD:
        return "linear", (f"the head on the frozen features cross-validates at {cv} (>= {AUTO_HEAD_GOOD:.0%}): "
                          f"fine-tuning has little to win")
    if per_class < AUTO_MIN_PER_CLASS:
        return "linear", (f"{per_class:.0f} training images per class (< {AUTO_MIN_PER_CLASS}): too few to "
                          f"fine-tune without overfitting (head cross-validated at {cv})")
    if budget is not None and finetune_s is not None:
        needed = finetune_s()
        if needed > budget:
            return "linear", (f"fine-tuning would take about {needed:.0f} s, over the {budget:.0f} s budget "
                              f"(head cross-validated at {cv})")
    return "lp-ft", (f"the head cross-validates at {cv} (< {AUTO_HEAD_GOOD:.0%}) on {per_class:.0f} images per class: "
                     f"fine-tuning may win; it is kept only if it beats the head on the same val images")


def run(ctx):
    import dataclasses

    from ..heads import head_choice
    from ..network import estimate_finetune_seconds
    from ..run import context_at, network_preprocess

    f = ctx.cached_features()
    per_class = f.num_images / len(f.split.classes)
    ft_ctx = dataclasses.replace(context_at(ctx, network_preprocess(ctx.models.spec, ctx.split)),
                                 cfg=ctx.cfg.for_strategy("lp-ft"))

    def choose():  # measured once, by the primary of a group
        choice = head_choice(ctx.cfg.for_strategy("linear"), f)  # memoized on `f`: linear reuses it
        return choice, *choose_strategy(per_class, choice.cv_accuracy,
                                        lambda: estimate_finetune_seconds(ft_ctx, ft_ctx.cfg), ctx.cfg.budget)

    choice, chosen, reason = ctx.group.decide(choose)
    ctx.console.info(f"auto: {chosen}, because {reason}")
    head = STRATEGIES.get("linear").run(dataclasses.replace(ctx, cfg=ctx.cfg.for_strategy("linear")))
    outcome = head
    if chosen == "lp-ft":
        head.state = {k: v.copy() for k, v in head.state.items()}  # (NumPy) fine-tuning changes the network in place
        tuned = STRATEGIES.get("lp-ft").run(ft_ctx)
        head_acc, tuned_acc = _val_acc(head), _val_acc(tuned)
        if tuned.info.get("kept") != "probe" and tuned_acc > head_acc:
            outcome = dataclasses.replace(tuned, pre=ft_ctx.pre)
            verdict = f"kept lp-ft: val accuracy {tuned_acc:.1%} vs the head's {head_acc:.1%} on the same images"
        else:
            verdict = (f"kept the head: val accuracy {head_acc:.1%}, lp-ft reached {tuned_acc:.1%} "
                       f"(best fine-tuned epoch {tuned.info.get('fine_tuned_val_acc', tuned_acc):.1%})")
        outcome.info.update(head_val_acc=head_acc, lp_ft_val_acc=tuned_acc)
        ctx.console.info(f"auto: {verdict}")
        reason += "; " + verdict
    outcome.info.update(strategy_reason=reason, head_cv_accuracy=choice.cv_accuracy, images_per_class=per_class)
    return outcome


def _val_acc(outcome) -> float:
    import numpy as np

    y = np.array([s.label for s in outcome.split.val])
    if not len(y):
        return 0.0
    return float((np.asarray(outcome.val_logits).argmax(1) == y).mean())


register(Strategy(
    name="auto", order=7, run=run, trains="chosen", uses_features=True,
    summary="chosen by measurement (cross-validated heads, timed fine-tuning steps, --budget); LP-FT kept only "
            "if it beats the head; the choice and its numbers go to the console and results.json",
    # the options of its candidates (resolved for the one chosen) and its own
    options=("aug_views", "backbone_lr_mult", "budget", "features", "sync_bn"), defaults={"aug_views": 0, "features": "auto"},
    optimizers=("lbfgs", "adamw", "adam", "sgd"),
))
