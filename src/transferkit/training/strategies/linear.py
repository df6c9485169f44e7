"""linear (the default): the backbone frozen; each image's features computed once and cached; a
new head fitted on them (a logistic regression by default, its regularization and its input
features chosen by cross-validation on the training images)."""

import numpy as np

from .base import HEAD_DEFAULTS, Strategy, register


def run(ctx):
    from ..context import Outcome
    from ..heads import fit_best_head, head_temperature, head_thresholds

    f = ctx.cached_features()
    # fitted once, by the primary of a group, every rank getting the head; or with the features
    # sharded (torchrun, #31), by every rank together on its rows
    result, linear, choice = f.decide(lambda: fit_best_head(ctx.cfg, f, ctx.console.progress, ctx.checkpoint,
                                                            ctx.resume))
    thresholds = temperature = None
    if f.split.task.multi and choice.folds:  # multi-label: each class's threshold, on out-of-fold predictions
        thresholds = f.decide(lambda: head_thresholds(ctx.cfg, f, choice))
    elif choice.folds and not f.sharded:  # single-label: the temperature, on the same out-of-fold predictions
        temperature = f.decide(lambda: head_temperature(ctx.cfg, f, choice))
    width = f.widths[choice.features]
    val_logits = f.all_val(linear(f.x_val[:, :width]))
    if choice.cv_accuracy is not None:
        ctx.console.info(head_choice_line(choice, f.split.task))
    # NumPy throughout: with the features, the head and the backbone's weights cached, no torch
    state = {f"backbone.{k}": v for k, v in ctx.models.backbone_arrays().items()}
    state.update(linear.state())
    ood, val_ood = features_ood(f, ctx.cfg.seed)
    return Outcome(result, val_logits, state, f.split, ctx.cfg,
                   {**f.facts, "network_built": ctx.models.built, "head": choice.to_dict()}, features=choice.features,
                   thresholds=thresholds, temperature=temperature, ood=ood, val_ood=val_ood)


def features_ood(f, seed: int):
    """(`ood.Ood`, the val images' scores) from the cached features of a frozen backbone (the
    last layer's). Features sharded over a group: the reference rows gathered from every rank
    and the val rows too, in the split's order (the same as one process; on the primary, None
    elsewhere)."""
    from ...ood import Ood, fitted, reference_rows, thresholded
    from ...task import strata_of

    train_x, val_x = f.last_layer()
    if not f.sharded:
        return fitted(train_x, strata_of(np.asarray(f.y_train[:f.num_images])), val_x, seed)
    strata = strata_of(f.split.targets(f.split.train))
    mine = np.isin(f.train_index, reference_rows(len(strata), strata, seed))
    parts = f.group.gather((f.train_index[mine], train_x[mine]))
    val_x = f.all_val(val_x)
    if parts is None or val_x is None:
        return None, None
    index = np.concatenate([i for i, _ in parts])
    rows = np.concatenate([x for _, x in parts])[np.argsort(index, kind="stable")]
    if not len(rows):
        return None, None
    return thresholded(Ood.of_rows(rows), val_x)


def head_choice_line(choice, task=None) -> str:
    """One console line: the head chosen and the cross-validated numbers it was chosen on (a
    multi-label `task`'s cross-validation measures mAP)."""
    measure = "mAP" if task is not None and task.multi else "accuracy"
    others = [f"{name} {row['cv_accuracy']:.1%} (log loss {row['cv_log_loss']:.3f})" for name in ("last", "multi")
              if (row := choice.best_for(name)) is not None]
    folds = f"{choice.folds} folds" + (f" x {choice.repeats} draws" if choice.repeats > 1 else "")
    return (f"head: {choice.features}-layer features, {choice.scaling} scaling, weight decay {choice.weight_decay:g} "
            f"(cross-validated {measure} {choice.cv_accuracy:.1%} in {folds}, chosen by log loss; best per feature set: "
            f"{', '.join(others)}; {'cached' if choice.cached else f'{choice.seconds:.1f} s'})")


register(Strategy(
    name="linear", order=0, run=run, trains="head", uses_features=True,
    summary="frozen backbone, new head (a logistic regression on cached features, tuned by cross-validation)",
    options=("aug_views", "features"), defaults=HEAD_DEFAULTS, optimizers=("lbfgs", "adamw", "adam", "sgd"),
))
