"""distill: fine-tune the student (every layer, as finetune) on the labels and on the --teacher
run's softened logits for the very same augmented views (Hinton et al., 2015; Beyer et al., 2022)."""

from .base import NETWORK_DEFAULTS, NO_MIXING, Strategy, register


def run(ctx):
    from ...data.datasets import labels_of, train_loader
    from ..losses import DistillLoss
    from ..network import train_network
    from ..teacher import WithTeacher, teacher_logits

    cfg, facts = ctx.cfg, {}

    def adapt(net):
        base = net.loader.dataset
        logits, more = teacher_logits(ctx, base)
        facts.update(more)
        net.loader = train_loader(WithTeacher(base, logits), labels_of(net.split.train), cfg.batch_size, cfg.seed,
                                  cfg.balanced_sampler, ctx.workers, drop_last=net.loader.drop_last, group=ctx.group)
        net.loss = DistillLoss(net.loss, cfg.temperature, cfg.alpha)
        return net

    outcome = train_network(ctx, adapt=adapt)
    outcome.info.update(facts)
    return outcome


# T 1, alpha 0.5: the only setting of five measured (README, "Distillation") that was at least as
# accurate as labels alone on both shared datasets; T = 1 is Beyer et al.'s function matching.
register(Strategy(
    name="distill", order=6, run=run, trains="all", backbone_lr="scaled",
    summary="finetune, learning from the --teacher run's logits too",
    options=("teacher", "temperature", "alpha", "backbone_lr_mult", "sync_bn", *NO_MIXING), required=("teacher",),
    defaults={**NETWORK_DEFAULTS, "temperature": 1.0, "alpha": 0.5},
))
