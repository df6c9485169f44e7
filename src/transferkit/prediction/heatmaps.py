"""Heatmaps of where in the image an answer comes from, torch-free: class activation maps from a
backbone's spatial maps and the head's weights (`class_maps`, exact for a linear head on pooled
features: `models.maps`), placed back on the image as it was decoded (`on_image`: the model saw
its short side resized and the centre cropped; what it never saw is 0), and written as an 8-bit
greyscale PNG of the image's own size plus an overlay JPEG (`write`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OVERLAY_MAX_SIDE = 1024  # the overlay JPEG's longer side at most (the PNG is the image's own size)
OVERLAY_ALPHA = 0.5  # the heatmap's weight in the overlay
HEATMAP_SUFFIX, OVERLAY_SUFFIX = ".cam.png", ".cam.jpg"  # written beside each other: DIR/<image path><suffix>


def class_maps(maps: list[np.ndarray], weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(B, H, W) class activation maps of `classes` (B,): for each stage's maps (B, K_s, h_s, w_s)
    (the last layer's first, then any earlier stages, in the order of the head's columns) the sum
    over channels weighted by the class's columns of `weight` (C, D), upsampled to the finest
    stage's size and added. The spatial mean of the result is the class's logit less its bias.
    Maps past the head's columns (a head on the last layer's features of a multi-layer network)
    are left out."""
    widths = np.cumsum([0] + [m.shape[1] for m in maps])
    maps = [m for m, start in zip(maps, widths) if start < weight.shape[1]]
    size = max((m.shape[2], m.shape[3]) for m in maps)
    out = np.zeros((len(classes), *size), dtype=np.float32)
    start = 0
    for m in maps:
        w = weight[classes, start:start + m.shape[1]].astype(np.float32)  # (B, K_s)
        start += m.shape[1]
        cam = np.einsum("bkhw,bk->bhw", m.astype(np.float32), w)
        out += cam if cam.shape[1:] == size else np.stack([resize(c, size) for c in cam])
    return out


def resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map (h, w) resized to `size` (H, W), bilinear (Pillow's, on float32)."""
    from PIL import Image

    if a.shape == tuple(size):
        return a.astype(np.float32)
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size[1], size[0]),
                                                                           Image.Resampling.BILINEAR))


def on_image(cam: np.ndarray, image_size: tuple[int, int], resize_size: int, input_size: int) -> np.ndarray:
    """The map of the model's view (resize the short side to `resize_size`, centre crop
    `input_size`) as a uint8 (H, W) heatmap of the whole image (`image_size`: W, H): scaled from
    its least (0) to its most evidence (255), as CAM's authors draw it; outside the crop 0. Not
    its positive part: a linear head's map has an arbitrary offset (its bias absorbs the features'
    mean, and the standardization's), so only the differences between places mean something,
    and a map below zero everywhere (common for a head on standardized features) was black.
    Grad-CAM's maps are positive already (`models.maps.grad_cam`)."""
    w0, h0 = image_size
    scale = resize_size / min(w0, h0)
    wr, hr = max(resize_size, round(w0 * scale)), max(resize_size, round(h0 * scale))
    left, top = (wr - input_size) // 2, (hr - input_size) // 2
    # the crop in the image's own pixels
    x0, y0 = round(left * w0 / wr), round(top * h0 / hr)
    x1, y1 = round((left + input_size) * w0 / wr), round((top + input_size) * h0 / hr)
    out = np.zeros((h0, w0), dtype=np.uint8)
    if x1 <= x0 or y1 <= y0:
        return out
    inside = resize(np.nan_to_num(cam.astype(np.float32)), (y1 - y0, x1 - x0))
    low, span = float(inside.min()), float(inside.max() - inside.min())
    if span > 0:  # (scaled once placed: the image's own pixels reach 255 at the map's maximum)
        out[y0:y1, x0:x1] = np.clip(np.rint((inside - low) * (255 / span)), 0, 255).astype(np.uint8)
    return out


def of_image(source, cam: np.ndarray, sizes: tuple[int, int], name: str | None = None,
             side: int | None = None):
    """(the image decoded as the model's view was, EXIF orientation applied, at most `side` on its
    longer side where given; its heatmap at that size: `on_image`). Raises `ImageDecodeError`."""
    from ..data.decode import load_rgb

    image = load_rgb(source, min_short_side=side, name=name)
    if side is not None:
        image.thumbnail((side, side))
    return image, on_image(cam, image.size, *sizes)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(x, y) of the heatmap's maximum (the pointing test's point)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)


def overlay(image, heat: np.ndarray):
    """The image (PIL, RGB) with the heatmap in a colour map over it, at most OVERLAY_MAX_SIDE on its longer side."""
    from matplotlib import colormaps
    from PIL import Image

    lut = (colormaps["inferno"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    image = image.convert("RGB")
    scale = min(1.0, OVERLAY_MAX_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image, np.float32)
    h = np.asarray(Image.fromarray(heat).resize(size, Image.Resampling.BILINEAR)) if size != image.size else heat
    blended = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * lut[h].astype(np.float32)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def encoded(image, heat: np.ndarray) -> tuple[bytes, bytes]:
    """(the heatmap as PNG, the overlay as JPEG) bytes."""
    import io

    from PIL import Image

    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(heat, mode="L").save(png, format="PNG")
    overlay(image, heat).save(jpg, format="JPEG", quality=85)
    return png.getvalue(), jpg.getvalue()


def write(target: Path, image, heat: np.ndarray) -> None:
    """`target` + HEATMAP_SUFFIX (the 8-bit greyscale heatmap, the image's own size) and
    `target` + OVERLAY_SUFFIX (the overlay), each written whole or not at all."""
    from ..files import atomic_write

    png, jpg = encoded(image, heat)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target.with_name(target.name + HEATMAP_SUFFIX), png)
    atomic_write(target.with_name(target.name + OVERLAY_SUFFIX), jpg)
