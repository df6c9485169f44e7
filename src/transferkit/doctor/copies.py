"""Near copies confirmed by a second signal: the images themselves, aligned.

The backbone's last-layer features are made to ignore what a copy changes (crop, scale,
compression, colour), and so they also rate distinct photos of similar things alike: in the
shared sets, copies made by a crop, a 0.6x resize, JPEG quality 35, a mirror, a 3 degree turn and
a brightness change together score down to 0.54 cosine, while distinct photos of one class reach
0.81. Perceptual hashes (imagehash's pHash, measured) survive resizing, recompression and
brightness, but not a crop or a turn of a few degrees (copies 22-24 bits apart, distinct photos
from 20).

The second signal compares the pictures: each image's 64 x 64 grey thumbnail (cached beside its
content hash, `images`), one image's sub-regions (5 sizes from 80% to 100% of each side, at up to
5 places along each) against the other's whole picture, mirrored or not and turned by up to 5
degrees, at 24 x 24 px inside a disc (the corners a turn fills are left out), by normalised
cross-correlation of their detail (the picture less its Gaussian blur: distinct photos of one
centred flower on a dark background share the layout, not the detail), both ways round; the best
is the pair's `match`. Measured on the shared sets (20 copies of each kind): copies match at
0.69-1.00, distinct photos at most 0.44 (hymenoptera) and 0.71 (flowers, at cosine 0.65). A pair
is a copy when match >= COPY_MATCH and match + cosine >= COPY_SUM (README, "The thresholds").

Only candidate pairs are compared: each image's nearest neighbours by features at or above
CANDIDATE cosine (at most `checks.NEIGHBOURS` per image): the cost grows with the images, about
1 ms a pair. No torch here.
"""

from __future__ import annotations

import numpy as np

THUMB = 64  # the cached thumbnail's side (grey, the whole image squeezed into a square)
SIDE = 24  # the side compared at
SIZES = (1.0, 0.95, 0.9, 0.85, 0.8)  # of each side of the region compared with the other image
POSITIONS = 5  # positions of a smaller region along each side
ANGLES = (-5.0, -2.5, 0.0, 2.5, 5.0)  # degrees the other image is turned by
DETAIL_SIGMA = 2.0  # px at SIDE: the blur taken away before comparing
COPY_MATCH, COPY_SUM = 0.70, 1.45
CANDIDATE = COPY_SUM - 1  # least cosine of a pair compared (below it no match reaches COPY_SUM)


def _sampling(start: float, size: float) -> np.ndarray:
    """(SIDE, THUMB) linear interpolation taking the fraction [start, start + size] of a side."""
    pos = np.clip((start + (np.arange(SIDE) + 0.5) / SIDE * size) * THUMB - 0.5, 0, THUMB - 1)
    lo = np.floor(pos).astype(int)
    hi, w = np.minimum(lo + 1, THUMB - 1), (pos - lo).astype(np.float32)
    m = np.zeros((SIDE, THUMB), np.float32)
    np.add.at(m, (np.arange(SIDE), lo), 1 - w)
    np.add.at(m, (np.arange(SIDE), hi), w)
    return m


_AXIS = np.stack([_sampling(start, s) for s in SIZES
                  for start in (np.linspace(0, 1 - s, POSITIONS) if s < 1 else (0.0,))])
_yy, _xx = np.mgrid[:SIDE, :SIDE] - (SIDE - 1) / 2
_DISC = ((_yy ** 2 + _xx ** 2) <= (SIDE / 2) ** 2).ravel()


def _normalised(pictures: np.ndarray) -> np.ndarray:
    """(n, SIDE, SIDE) pictures high-passed (less their Gaussian blur: the detail, not the layout,
    which distinct photos of a centred flower share) and normalised to zero mean and unit length
    inside the disc: (n, pixels in the disc)."""
    from scipy import ndimage

    detail = pictures - ndimage.gaussian_filter(pictures, (0, DETAIL_SIGMA, DETAIL_SIGMA))
    r = detail.reshape(len(pictures), SIDE * SIDE)[:, _DISC]
    r = r - r.mean(-1, keepdims=True)
    return r / (np.linalg.norm(r, axis=-1, keepdims=True) + 1e-6)


def regions(thumb: np.ndarray) -> np.ndarray:
    """Every sub-region of `thumb` at SIDE x SIDE, normalised: (regions, pixels in the disc)."""
    t = thumb.astype(np.float32)
    a = np.tensordot(_AXIS, t, axes=([2], [0]))  # (sizes along y, SIDE, THUMB)
    r = np.tensordot(a, _AXIS, axes=([2], [2]))  # (y, SIDE, x, SIDE)
    return _normalised(r.transpose(0, 2, 1, 3).reshape(-1, SIDE, SIDE))


def views(thumb: np.ndarray) -> np.ndarray:
    """The whole of `thumb` at SIDE x SIDE, turned by each of ANGLES, plain and mirrored,
    normalised: (views, pixels in the disc)."""
    from scipy import ndimage

    t, whole = thumb.astype(np.float32), _AXIS[0]
    out = []
    for angle in ANGLES:
        turned = ndimage.rotate(t, angle, reshape=False, order=1, mode="nearest") if angle else t
        v = whole @ turned @ whole.T
        out += [v, v[:, ::-1]]
    return _normalised(np.stack(out))


def match_scores(thumbs: list[np.ndarray | None], pairs: np.ndarray) -> np.ndarray:
    """The best normalised cross-correlation of each pair (i, j) of `thumbs`, either image's
    regions against the other's views (NaN where a thumbnail is missing)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    scores = np.full(len(pairs), np.nan, dtype=np.float32)
    involved = np.unique(pairs)
    seen = {int(i): views(thumbs[i]).astype(np.float16) for i in involved if thumbs[i] is not None}
    partners: dict[int, list[tuple[int, int]]] = {}
    for p, (i, j) in enumerate(pairs):
        if int(i) in seen and int(j) in seen:
            partners.setdefault(int(i), []).append((p, int(j)))
            partners.setdefault(int(j), []).append((p, int(i)))
    for i, items in partners.items():
        bank = regions(thumbs[i])
        others = np.concatenate([seen[j] for _, j in items]).astype(np.float32)  # (m x views, pixels)
        best = (bank @ others.T).max(0).reshape(len(items), -1).max(1)
        for (p, _), b in zip(items, best):
            scores[p] = b if np.isnan(scores[p]) else max(scores[p], b)
    return scores


def is_copy(match: float, cosine: float) -> bool:
    return bool(match >= COPY_MATCH and match + cosine >= COPY_SUM)
