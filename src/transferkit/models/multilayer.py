"""Multi-layer features: the backbone's pooled output concatenated with the global-average-pooled
activations of earlier stages, from the same single forward pass.

With little data unlike ImageNet (textures, microscopy, product shots) the top layers are the
most ImageNet-specific; a linear head on earlier, more generic activations often separates such
classes better. The backbone is traced with torch.fx (torchvision's/timm's feature extractor): the
result is an ordinary module whose parameters keep their names, so the same weights load into it,
and it traces, exports and deep-copies like the original. Its output puts the last layer's
features first: `x[:, :last_features]` are exactly the plain backbone's.
"""

from __future__ import annotations

import torch
from torch import nn

# timm feature levels tapped: the stages at 1/8, 1/16 and 1/32 of the input resolution (the finer
# ones are edges and colours; their pooled means carry little).
TAP_REDUCTIONS = (8, 16, 32)


def stage_taps(backbone: nn.Module) -> list[str]:
    """Names of the modules whose pooled outputs are added: the timm feature levels at 1/8, 1/16
    and 1/32 resolution, leaving out one that is the pooled output itself (same width, e.g. a
    ResNet's last stage). [] for a model without timm's `feature_info` (torchvision's)."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return []
    levels = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    taps = [d["module"] for d in levels if d.get("reduction") in TAP_REDUCTIONS]
    last = levels[-1] if levels else None
    if last is not None and last["module"] in taps and last["num_chs"] == getattr(backbone, "num_features", None):
        taps.remove(last["module"])
    return taps


def multi_layer(backbone: nn.Module, name: str) -> nn.Module:
    """`with_stage_features` at `stage_taps`; a `UserError` naming the model when it has none or
    does not trace."""
    from ..errors import UserError

    taps = stage_taps(backbone)
    if not taps:
        raise UserError(f"--features multi needs a timm backbone (its feature_info names the stages); {name} has none")
    try:
        return with_stage_features(backbone, taps)
    except Exception as exc:  # noqa: BLE001 - fx tracing fails in many ways on unusual models
        raise UserError(f"--features multi: {name} cannot be traced into stages ({type(exc).__name__}: {exc})") from None


def with_stage_features(backbone: nn.Module, taps: list[str]) -> nn.Module:
    """`backbone` as an fx GraphModule whose output is cat(pooled output, mean over H, W of each
    tap's activation). Sets `num_features` (the total) and `last_features` (the plain output's)."""
    from timm.models import create_feature_extractor, get_graph_node_names

    last = get_graph_node_names(backbone)[1][-1]
    nodes = {last: "out", **{t: f"tap{i}" for i, t in enumerate(taps)}}
    dual = create_feature_extractor(backbone, return_nodes=nodes)
    # torchvision's DualGraphModule keeps a graph per mode (and does not deep-copy faithfully);
    # where the two are the same (every timm CNN tried: the mode lives in leaf modules) one plain
    # GraphModule serves both
    if str(dual.train_graph) != str(dual.eval_graph):
        raise ValueError("its train and eval graphs differ")
    graph = dual.train_graph
    output = next(n for n in graph.nodes if n.op == "output")
    named = output.args[0]
    with graph.inserting_before(output):
        pooled = [graph.call_method("mean", (named[f"tap{i}"], (2, 3))) for i in range(len(taps))]
        joined = graph.call_function(torch.cat, ([named["out"], *pooled], 1))
    output.args = (joined,)
    graph.lint()
    graph_module = torch.fx.GraphModule(dual, graph, class_name=type(backbone).__name__)
    with torch.no_grad():
        probe = graph_module.eval()(torch.zeros(1, 3, 64, 64))
    for name in ("group_matcher", "feature_info", "pretrained_cfg", "default_cfg"):  # what timm's helpers read
        if hasattr(backbone, name):
            setattr(graph_module, name, getattr(backbone, name))
    graph_module.last_features = backbone.num_features
    graph_module.num_features = probe.shape[1]
    graph_module.taps = list(taps)
    graph_module.train(backbone.training)
    return graph_module
