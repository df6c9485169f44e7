"""lp-ft (Kumar et al., 2022): a linear probe on cached features, then fine-tuning of every
layer starting from that head instead of a random one.

The recipe is made so that fine-tuning starts at the probe's accuracy and cannot end below it:
every BatchNorm keeps its ImageNet statistics (the network at step 0 is exactly the probe's), a
warm-up epoch, the backbone at a fraction of the head's learning rate, and the probe itself is
kept if no fine-tuned epoch beats it on the same val images.
"""

from .base import NETWORK_DEFAULTS, RECIPE_OPTIONS, Strategy, register

LP_FT_DEFAULTS = {**NETWORK_DEFAULTS, "epochs": 6, "lr": 3e-4, "backbone_lr_mult": 0.3, "warmup_epochs": 1.0,
                  "weight_decay": 0.05, "label_smoothing": 0.1, "aug_views": 0, "features": "auto"}


def run(ctx):
    import dataclasses

    import torch

    from ..context import Outcome
    from ..heads import fit_best_head, head_temperature, head_thresholds
    from ..network import train_network
    from .linear import features_ood, head_choice_line

    f = ctx.cached_features()
    probe_cfg = dataclasses.replace(ctx.cfg, optimizer="lbfgs", weight_decay=None)
    probe, head, choice = f.decide(lambda: fit_best_head(probe_cfg, f, ctx.console.progress))  # as linear
    if choice.cv_accuracy is not None:
        ctx.console.info(head_choice_line(choice, f.split.task))
    width = f.widths[choice.features]
    probe_logits = f.all_val(head(f.x_val[:, :width]))  # (sharded: on the primary alone)
    y_val = f.split.targets(f.split.val)
    probe_acc = ctx.group.decide(lambda: f.split.task.score(probe_logits, y_val))  # (multi-label: mAP)
    probe_head = head
    model_width = f.widths.get("multi", width) if ctx.models.features == "multi" else width
    if model_width > width:  # the network is multi-layer: the earlier stages' columns start at zero
        head = head.widened(model_width)
    facts = {"probe_val_acc": probe_acc, "probe_steps": probe.best_epoch, "probe_unit": probe.unit,
             "head": choice.to_dict(), **f.facts}
    backbone = {k: v.detach().clone() for k, v in ctx.models.backbone_state().items()}  # the probe's
    outcome = train_network(ctx, head_init=head, split=f.split)
    outcome.info.update(facts)
    features = ctx.models.features
    if outcome.fit.best_val_acc > probe_acc or not len(y_val):
        return dataclasses.replace(outcome, features=features)
    tuned = (f"{outcome.fit.best_val_acc:.4f} <= {probe_acc:.4f}" if outcome.fit.history
             else "no epoch finished")
    ctx.console.info(f"lp-ft: no fine-tuned epoch beat the probe on the val images ({tuned}): keeping the probe")
    state = {f"backbone.{k}": v for k, v in backbone.items()}
    state.update({k: torch.from_numpy(v) for k, v in probe_head.state().items()})
    outcome.info.update(kept="probe", fine_tuned_val_acc=outcome.fit.best_val_acc)
    outcome.fit.best_epoch, outcome.fit.best_val_acc = 0, probe_acc
    probe_logits = torch.from_numpy(probe_logits) if probe_logits is not None else None
    thresholds = f.decide(lambda: head_thresholds(probe_cfg, f, choice)) if f.split.task.multi and choice.folds else None
    temperature = f.decide(lambda: head_temperature(probe_cfg, f, choice)) \
        if not f.split.task.multi and choice.folds and not f.sharded else None
    ood, val_ood = features_ood(f, ctx.cfg.seed)
    return Outcome(outcome.fit, probe_logits, state, f.split, outcome.cfg, outcome.info, features=choice.features,
                   thresholds=thresholds, temperature=temperature, ood=ood, val_ood=val_ood)


register(Strategy(
    name="lp-ft", order=4, run=run, trains="all", backbone_lr="scaled", uses_features=True, batchnorm="frozen",
    summary="a linear probe on cached features, then every layer fine-tuned from that head (BatchNorm statistics "
            "kept); the probe is kept if fine-tuning does not beat it",
    options=("aug_views", "backbone_lr_mult", "features", "sync_bn", *RECIPE_OPTIONS), defaults=LP_FT_DEFAULTS,
))
