"""linear (the default): the backbone frozen; each image's features computed once and cached; a
new head fitted on them (a logistic regression by default)."""

from .base import HEAD_DEFAULTS, Strategy, register


def run(ctx):
    import torch

    from ..context import Outcome
    from ..heads import train_head

    f = ctx.cached_features()
    result, linear = train_head(ctx.cfg, len(f.split.classes), f.x_train, f.y_train, f.x_val, f.y_val,
                                ctx.console.progress, ctx.checkpoint, ctx.resume)
    with torch.inference_mode():
        val_logits = linear(f.x_val)
    state = {f"backbone.{k}": v for k, v in ctx.models.backbone_state().items()}
    state.update({"head.weight": linear.weight.detach(), "head.bias": linear.bias.detach()})
    return Outcome(result, val_logits, state, f.split, ctx.cfg, {**f.facts, "network_built": ctx.models.built})


register(Strategy(
    name="linear", order=0, run=run, trains="head", uses_features=True,
    summary="frozen backbone, new head (a logistic regression on cached features)",
    options=("aug_views",), defaults=HEAD_DEFAULTS, optimizers=("lbfgs", "adamw", "adam", "sgd"),
))
