"""auto: choose between the linear head and LP-FT by measurement, say why, and keep the better.

What is cheap is measured first: the cross-validated accuracy of the best head on the cached
features (last and multi-layer, `heads.select_head`, with near-identical images kept in one fold:
an honest ruler where the training images hold bursts of the same shot). Fine-tuning (LP-FT) runs
only when that leaves room and there are enough images per class; with --budget, its epochs are
those that fit in what is left of the budget (timed training steps; up to twice its default),
and no epoch starts that would end after it. LP-FT then keeps the fine-tuned network only if it beats the head on the same
val images. Every candidate measured is reported with its cost (`strategy_info.candidates`).
"""

from __future__ import annotations

import time
from typing import Callable

from ..options import for_strategy
from .base import RECIPE_OPTIONS, STRATEGIES, Strategy, register

# auto's thresholds. Fine-tuning that does not pay costs only time (LP-FT keeps its probe then).
AUTO_HEAD_GOOD = 0.97  # the head's cross-validated accuracy this high: fine-tuning has little to win
AUTO_MIN_PER_CLASS = 30  # fewer training images per class: fine-tuning mostly overfits (README, bench/accuracy.py)
MIN_EPOCHS = 2  # LP-FT's warm-up epoch and one more: with fewer it cannot move past its probe
# With --budget, LP-FT gets the epochs that fit, up to this many times its default: a budget is
# there to be spent (CIFAR-10, --budget 900: 6 epochs used 536 s of it, val still rising).
BUDGET_MAX_EPOCHS_FACTOR = 2
# Of a --budget, kept back for what follows training (the kept model's val pass, outputs, report).
BUDGET_RESERVE_S, BUDGET_RESERVE_SHARE = 3.0, 0.03


def choose_strategy(per_class: float, head_cv: float | None,
                    epochs_within: Callable[[], tuple[int, float]] | None) -> tuple[str, str, int | None]:
    """(strategy, reason, epochs of LP-FT or None: its default) from the training images per
    class, the best head's cross-validated accuracy and, with a budget, `epochs_within()`: (the
    LP-FT epochs that fit in what is left of it, the estimated seconds of MIN_EPOCHS), measured
    only when needed."""
    cv = "not measurable" if head_cv is None else f"{head_cv:.1%}"
    if head_cv is None:
        return "linear", "a class has a single training image: nothing to cross-validate or fine-tune on", None
    if head_cv >= AUTO_HEAD_GOOD:
        return "linear", (f"the head on the frozen features cross-validates at {cv} (>= {AUTO_HEAD_GOOD:.0%}): "
                          f"fine-tuning has little to win"), None
    if per_class < AUTO_MIN_PER_CLASS:
        return "linear", (f"{per_class:.0f} training images per class (< {AUTO_MIN_PER_CLASS}): too few to "
                          f"fine-tune without overfitting (head cross-validated at {cv})"), None
    reason = (f"the head cross-validates at {cv} (< {AUTO_HEAD_GOOD:.0%}) on {per_class:.0f} images per class: "
              f"fine-tuning may win; it is kept only if it beats the head on the same val images")
    if epochs_within is None:
        return "lp-ft", reason, None
    epochs, needed = epochs_within()
    if epochs < MIN_EPOCHS and not needed:
        return "linear", f"the budget was spent before fine-tuning could start (head cross-validated at {cv})", None
    if epochs < MIN_EPOCHS:
        return "linear", (f"fine-tuning would take about {needed:.0f} s for {MIN_EPOCHS} epochs, more than is left "
                          f"of the budget (head cross-validated at {cv})"), None
    return "lp-ft", f"{reason}; {epochs} epochs fit in the budget", epochs


def run(ctx):
    import dataclasses

    from ..heads import head_choice
    from ..network import estimate_finetune_cost
    from ..setup import context_at, network_preprocess

    deadline = ctx.started + ctx.cfg.budget if ctx.cfg.budget else None
    reserve = BUDGET_RESERVE_S + BUDGET_RESERVE_SHARE * (ctx.cfg.budget or 0.0)
    start = time.perf_counter()
    f = ctx.cached_features()
    features_s = time.perf_counter() - start
    per_class = f.total_images / len(f.split.classes)
    ft_ctx = dataclasses.replace(context_at(ctx, network_preprocess(ctx.models.spec, ctx.split)),
                                 cfg=for_strategy(ctx.cfg, "lp-ft"))
    estimate = {}

    def epochs_within() -> tuple[int, float]:
        if deadline - time.perf_counter() - reserve <= 0:  # spent already: nothing to time
            return 0, 0.0
        if "cost" not in estimate:
            timing = time.perf_counter()
            estimate["cost"] = estimate_finetune_cost(ft_ctx)
            estimate["seconds"] = time.perf_counter() - timing
        cost = estimate["cost"]
        left = deadline - time.perf_counter() - reserve - cost.decode
        most = BUDGET_MAX_EPOCHS_FACTOR * ft_ctx.cfg.epochs
        return min(most, max(0, int(left // cost.per_epoch))), cost.seconds(MIN_EPOCHS)

    def choose():  # measured once, by the primary of a group
        choice = head_choice(for_strategy(ctx.cfg, "linear"), f)  # memoized on `f`: linear reuses it
        return choice, *choose_strategy(per_class, choice.cv_accuracy, epochs_within if deadline else None)

    start = time.perf_counter()
    if f.sharded:  # the cross-validation is data-parallel: every rank takes part (then it is memoized)
        head_choice(for_strategy(ctx.cfg, "linear"), f)
    choice, chosen, reason, epochs = ctx.group.decide(choose)
    ctx.console.info(f"auto: {chosen}, because {reason}")
    head = STRATEGIES.get("linear").run(dataclasses.replace(ctx, cfg=for_strategy(ctx.cfg, "linear")))
    head_acc = ctx.group.decide(lambda: _val_acc(head))  # (sharded features: the val logits are the primary's)
    candidates = _head_candidates(f, features_s, choice, head_acc,
                                  time.perf_counter() - start - estimate.get("seconds", 0.0))
    timed = (f"; fine-tuning's cost timed on 4 training steps in {estimate['seconds']:.1f} s"
             if "seconds" in estimate else "")
    outcome = head
    if chosen == "lp-ft":
        head.state = {k: v.copy() for k, v in head.state.items()}  # (NumPy) fine-tuning changes the network in place
        outcome, candidate, verdict = _lp_ft(ctx, ft_ctx, head, head_acc, epochs,
                                             None if deadline is None else deadline - reserve, estimate, timed)
        candidates.append(candidate)
        reason += "; " + verdict
    else:
        candidates.append({"candidate": "lp-ft", "what": "not run: " + reason + timed,
                           "seconds": round(estimate.get("seconds", 0.0), 2)})
    candidates[1]["kept"] = outcome is head
    for c in candidates:
        ctx.console.info("auto: " + candidate_line(c))
    outcome.info.update(strategy_reason=reason, head_cv_accuracy=choice.cv_accuracy, images_per_class=per_class,
                        candidates=candidates, budget_s=ctx.cfg.budget)
    return outcome


def _head_candidates(f, features_s: float, choice, head_acc: float, head_s: float) -> list[dict]:
    """The candidates' rows of the features' pass and the head on them."""
    return [
        {"candidate": "features", "what": f"{f.total_images} training + {len(f.split.val)} val images through the frozen "
                                          f"backbone ({f.facts.get('features_computed', 0)} computed, the rest cached)",
         "seconds": round(features_s, 2)},
        {"candidate": "linear", "what": f"the head, cross-validated ({choice.folds} folds, "
                                        f"{len(choice.table)} settings) and fitted",
         "cv_accuracy": choice.cv_accuracy, "val_acc": head_acc, "seconds": round(head_s, 2)},
    ]


def _lp_ft(ctx, ft_ctx, head, head_acc: float, epochs: int | None, deadline: float | None, estimate: dict,
           timed: str):
    """Run LP-FT (`epochs`: None, its own; `deadline`: when it must end) and keep it if it beats
    the head on the val images: (the outcome kept, its candidate row, the verdict)."""
    import dataclasses

    tuned_cfg = ft_ctx.cfg if epochs is None else dataclasses.replace(ft_ctx.cfg, epochs=epochs)
    tuned_ctx = dataclasses.replace(ft_ctx, cfg=tuned_cfg, deadline=deadline)
    start = time.perf_counter()
    tuned = STRATEGIES.get("lp-ft").run(tuned_ctx)
    tuned_acc = ctx.group.decide(lambda: _val_acc(tuned))
    kept = tuned.info.get("kept") != "probe" and tuned_acc > head_acc
    outcome = head
    if kept:
        outcome = dataclasses.replace(tuned, pre=ft_ctx.pre)
        verdict = f"kept lp-ft: val accuracy {tuned_acc:.1%} vs the head's {head_acc:.1%} on the same images"
    else:
        verdict = (f"kept the head: val accuracy {head_acc:.1%}, lp-ft reached {tuned_acc:.1%} "
                   f"(best fine-tuned epoch {tuned.info.get('fine_tuned_val_acc', tuned_acc):.1%})")
    cost = estimate.get("cost")
    candidate = {
        "candidate": "lp-ft", "what": f"{len(tuned.fit.history)} of {tuned_cfg.epochs} epochs at "
                                      f"{ft_ctx.pre.input_size} px" + _stopped(tuned.fit) + timed,
        "val_acc": tuned.info.get("fine_tuned_val_acc", tuned_acc),
        "seconds": round(time.perf_counter() - start + estimate.get("seconds", 0.0), 2),
        "estimated_seconds": round(cost.seconds(tuned_cfg.epochs), 1) if cost else None, "kept": kept}
    outcome.info.update(head_val_acc=head_acc, lp_ft_val_acc=tuned_acc)
    ctx.console.info(f"auto: {verdict}")
    return outcome, candidate, verdict


def candidate_line(c: dict) -> str:
    """One candidate of `strategy_info.candidates` in words (the console, the report)."""
    numbers = [f"CV {c['cv_accuracy']:.1%}" if c.get("cv_accuracy") is not None else "",
               f"val {c['val_acc']:.1%}" if c.get("val_acc") is not None else "",
               f"{c['seconds']:.1f} s" + (f" (estimated {c['estimated_seconds']:.0f} s)"
                                          if c.get("estimated_seconds") is not None else "")]
    kept = " (kept)" if c.get("kept") else ""
    return f"{c['candidate']}{kept}: {c['what']}; " + ", ".join(n for n in numbers if n)


def _stopped(fit) -> str:
    return "; stopped by the budget" if fit.stopped_by == "budget" else ""


def _val_acc(outcome) -> float:
    """The kept model's val figure (`Task.score`: accuracy; multi-label, mAP)."""
    import numpy as np

    split = outcome.split
    logits = outcome.val_logits
    logits = logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    return split.task.score(logits, split.targets(split.val))


register(Strategy(
    name="auto", order=7, run=run, trains="chosen", uses_features=True,
    summary="chosen by measurement (cross-validated heads, timed fine-tuning steps, --budget); LP-FT kept only "
            "if it beats the head; the choice and its numbers go to the console and results.json",
    # the options of its candidates (resolved for the one chosen) and its own
    options=("aug_views", "backbone_lr_mult", "budget", "features", "sync_bn", *RECIPE_OPTIONS),
    defaults={"aug_views": 0, "features": "auto"},
    optimizers=("lbfgs", "adamw", "adam", "sgd"),
))
