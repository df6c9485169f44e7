"""Build samples/hymenoptera_small from ../shared hymenoptera_data (run once; output committed)."""
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for split in ("train", "val"):
    for cls in ("ants", "bees"):
        files = sorted(p for p in (src / split / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:40]
        out = dst / split / cls
        out.mkdir(parents=True, exist_ok=True)
        for p in files:
            im = Image.open(p).convert("RGB")
            im.thumbnail((256, 256), Image.Resampling.LANCZOS)
            im.save(out / (p.stem.replace(" ", "_") + ".jpg"), quality=85)
