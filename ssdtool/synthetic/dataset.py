"""A COCO-format dataset of generated images, for running ``ssdtool eval`` end to end without COCO.

``python -m ssdtool.synthetic.dataset DIR --count 200`` writes ``DIR/images/000000000001.jpg`` ... and
``DIR/annotations.json`` (COCO instances format, val2017's categories). The images are
:func:`ssdtool.imaging.generated_images` scenes; the ground truth is a few seeded boxes per image. Accuracy against
it means nothing (the twin detects nothing real); the run's speed and its machinery are real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ssdtool import fsutil
from ssdtool.imaging import generated_images
from ssdtool.labels import COCO_CATEGORY_IDS, coco_categories

#: Sizes cycled through, as COCO's mix of landscape and portrait photos.
SIZES: tuple[tuple[int, int], ...] = ((640, 480), (480, 640), (640, 427), (500, 375))


def write_dataset(folder: str | Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``count`` generated JPEG images and their COCO annotation file into ``folder``; returns
    ``(annotations.json, images folder)``. Deterministic for a seed."""
    from PIL import Image

    root = Path(folder)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    images, annotations = [], []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        pixels = generated_images(1, seed=seed * 100_000 + index, size=(width, height))[0]
        image_id = index + 1
        name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(images_dir / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for _ in range(rng.randint(1, 6)):
            w, h = rng.uniform(0.05, 0.6) * width, rng.uniform(0.05, 0.6) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(COCO_CATEGORY_IDS[rng.randint(0, 80)]),
                                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0})
    document = {"info": {"description": f"ssdtool generated dataset, {count} images, seed {seed}"},
                "images": images, "annotations": annotations, "categories": coco_categories()}
    path = root / "annotations.json"
    fsutil.atomic_write(path, json.dumps(document).encode())
    return path, images_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssdtool.synthetic.dataset", description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    annotations, images = write_dataset(args.folder, args.count, args.seed)
    print(f"--annotations {annotations} --images {images}")


if __name__ == "__main__":
    main()
