"""lp-ft (Kumar et al., 2022): a linear probe on cached features, then fine-tuning of every
layer starting from that head instead of a random one."""

from .base import NETWORK_DEFAULTS, STRATEGIES, Strategy, register


def run(ctx):
    import dataclasses

    from ..heads import train_head
    from ..network import train_network

    f = ctx.cached_features()
    probe_cfg = dataclasses.replace(ctx.cfg, **STRATEGIES.get("linear").defaults_for("lbfgs"))
    probe, head = train_head(probe_cfg, len(f.split.classes), f.x_train, f.y_train, f.x_val, f.y_val,
                             ctx.console.progress)
    outcome = train_network(ctx, head_init=head, split=f.split)
    outcome.info.update(probe_val_acc=probe.best_val_acc, probe_steps=probe.best_epoch, probe_unit=probe.unit,
                        **f.facts)
    return outcome


register(Strategy(
    name="lp-ft", order=4, run=run, trains="all", backbone_lr="scaled", uses_features=True,
    summary="a linear probe on cached features, then every layer fine-tuned from that head",
    options=("aug_views", "backbone_lr_mult"), defaults={**NETWORK_DEFAULTS, "aug_views": 0},
))
