"""Where in the image each answer comes from: the backbone's spatial maps, and class activation
maps from them.

A linear head on globally average-pooled features makes the class activation map exact (Zhou et
al., 2016): the logit of class c is the spatial mean of sum_k W[c, k] * A[k] (+ its bias), so that
sum, at each position, is how much the position adds to the logit; a multi-layer head
(`multilayer`) sums one such map per stage it pools, each with its own columns of W. No gradient
is needed. `WithMaps` gives the pooled features and those maps from one forward pass, so a
converted graph (ONNX Runtime) gives them too and explaining stays torch-free
(`prediction.heatmaps.class_maps`).

Where the pooled features are not the maps' mean (a layer after the pooling: MobileNetV3's
conv_head, VGG's MLP) the map is Grad-CAM's (Selvaraju et al., 2017): the maps weighted by the
mean gradient of the class's logit, positive part (`grad_cam`); on a model where CAM is exact it
equals CAM's positive part divided by the number of positions (tested).
"""

from __future__ import annotations

import torch
from torch import nn

# relative: pooled features vs the maps' spatial means, for CAM to be exact; in bf16 (the fast
# inference copy on a CPU with bf16) 4 x its eps: rounding, where a layer after the pooling
# (MobileNetV3's conv_head, VGG's MLP) differs by the features' own scale
EXACT_TOLERANCE = 1e-3


def exact_tolerance(dtype: torch.dtype) -> float:
    return max(EXACT_TOLERANCE, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else EXACT_TOLERANCE


def spatial_modules(backbone: nn.Module, size: int) -> list[str]:
    """The name of the module whose output is the last spatial map (the features are its pooled
    mean, in most CNNs): the last module, in the order they finish, whose output is a (B, C, H, W)
    map with H, W > 1 ([] for none)."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: order.append(name)
                                       if isinstance(out, torch.Tensor) and out.dim() == 4
                                       and out.shape[2] > 1 and out.shape[3] > 1 else None)
               for name, m in backbone.named_modules() if name]
    try:
        with torch.no_grad():
            backbone.eval()(_like_weights(backbone, torch.zeros(1, 3, size, size)))
    finally:
        for h in handles:
            h.remove()
    return order[-1:]


def _like_weights(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` in the dtype and on the device of `module`'s weights (a fast inference copy may run in
    bf16: `runtime.Extractor`)."""
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    return x if weight is None else x.to(weight.device, weight.dtype)


class WithMaps(nn.Module):
    """`backbone` -> (pooled features (B, D), maps...): the last spatial maps, then each tapped
    stage's (`spatial_modules`; `taps`: the stages of a multi-layer backbone, default its own).
    `exact` says whether the maps' spatial means are the features, every column (checked on a
    probe), i.e. whether CAM is exact for a linear head on them."""

    def __init__(self, backbone: nn.Module, size: int, taps: list[str] | None = None):
        super().__init__()
        self.backbone = backbone
        taps = getattr(backbone, "taps", None) if taps is None else taps  # (a copy may have lost the attribute)
        self.names = spatial_modules(backbone, size)
        self.modules_ = [backbone.get_submodule(n) for n in self.names]
        # a multi-layer backbone (`multilayer`, an fx graph): the same graph also returning the
        # stages it pools (the inputs of its spatial means), sharing its modules
        self.tapped = _with_taps(backbone) if taps else None
        if self.tapped is not None:
            self.names += list(taps)
        self.exact = False
        self.widths: list[int] = []
        if self.names:
            with torch.no_grad():
                # (its own generator: the caller's random stream is left where it was)
                probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
                features, *maps = self(_like_weights(backbone, probe))
            self.widths = [int(m.shape[1]) for m in maps]
            means = torch.cat([m.float().mean((2, 3)) for m in maps], 1)
            tolerance = exact_tolerance(features.dtype)
            self.exact = means.shape[1] == features.shape[1] and bool(torch.allclose(
                means, features[:, :means.shape[1]].float(), rtol=tolerance,
                atol=tolerance * float(features.abs().max())))
        self.facts = {"exact": self.exact, "maps": list(self.names)}  # (what a conversion of it records)

    def forward(self, x: torch.Tensor):
        found: dict[int, torch.Tensor] = {}
        handles = [m.register_forward_hook(lambda mod, args, out, i=i: found.__setitem__(i, out))
                   for i, m in enumerate(self.modules_)]
        try:
            if self.tapped is not None:
                features, *taps = self.tapped(x)
            else:
                features, taps = self.backbone(x), []
        finally:
            for h in handles:
                h.remove()
        return (features, *(found[i] for i in range(len(self.modules_))), *taps)


def _with_taps(graph_module: nn.Module) -> nn.Module:
    """A multi-layer backbone's graph returning (its output, each tapped stage's map), in the
    order of its columns: the inputs of the spatial means `multilayer.with_stage_features` added."""
    import copy

    graph = copy.deepcopy(graph_module.graph)
    output = next(n for n in graph.nodes if n.op == "output")
    joined = output.args[0]  # torch.cat([last output, *pooled stages], 1)
    taps = [n.args[0] for n in joined.args[0][1:]]
    output.args = ((output.args[0], *taps),)
    graph.lint()
    return torch.fx.GraphModule(graph_module, graph)


def grad_cam(model: nn.Module, maps_net: WithMaps, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of `classes` (B,) on the last spatial maps: (B, H, W), positive, float32."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)  # (the backbone's weights may be frozen: the graph follows the input)
        features, last, *_ = maps_net(x)
        logits = model.head(features.float())
        chosen = logits.gather(1, classes.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(chosen, last)
    weights = grad.float().mean((2, 3), keepdim=True)
    return torch.relu((weights * last.detach().float()).sum(1))
