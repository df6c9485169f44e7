"""The maps network of a run's frozen backbone on ONNX Runtime (`models.maps.WithMaps`: its pooled
features and its spatial maps from one pass), converted once, checked and cached like the
features network, so a head on frozen features is explained without torch once it is there."""

from __future__ import annotations

from pathlib import Path

from .convert import Network, check_pixels, convert, lookup, session

MAPS_VERSION = 2  # a change of what the maps network is: +1 (2: always the whole features network)


def maps_network(meta, run_dir: Path) -> Network:
    """The maps network of a run fitted on a frozen backbone: the features network that
    `meta.frozen_features` names (multi-layer or not, whichever columns the head reads of it),
    returning its spatial maps too."""

    def build():
        from ..models import bundle
        from ..models.maps import WithMaps
        from ..models.multilayer import multi_layer

        backbone = bundle.load(run_dir)[0].backbone
        if meta.frozen_features["multi"] and not getattr(backbone, "taps", None):  # (a head on the last layer's)
            backbone = multi_layer(backbone, meta.backbone)
        return WithMaps(backbone, meta.preprocess.input_size)

    return Network("maps", {"maps": meta.frozen_features, "version": MAPS_VERSION}, build, pre=meta.preprocess,
                   label=f"{meta.backbone}'s backbone (with its spatial maps)", run_dir=run_dir)


def maps_session(meta, run_dir: Path, cache, threads: int = 0, say=None):
    """(an ONNX Runtime session of the run's maps network, whether its class maps are exact)."""
    network = maps_network(meta, run_dir)
    found = lookup(network, cache, say)
    if found is None:
        found = convert(network, check_pixels(run_dir, meta), cache, say)
    return session(found.model, threads), bool(found.facts.get("exact"))
