"""Test helpers: registries whose models are small ONNX files already placed in a cache."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY_URL = "synthetic:ssd-resnet34?seed=0&variant=tiny"


def tiny_entry_template() -> dict[str, Any]:
    """The packaged real-model entry with the tiny twin's input size (300 px)."""
    data = yaml.safe_load((ROOT / "models.yml").read_text())
    entry = copy.deepcopy(data["models"]["ssd-resnet34-1200-onnx"])
    entry["input"]["shape"] = [1, 3, 300, 300]
    entry["input"]["resize"] = [300, 300]
    return entry


def install_model(cache_dir: Path, registry_path: Path, name: str, model: onnx.ModelProto | bytes,
                  entry: dict[str, Any] | None = None, file_name: str = "model.onnx",
                  sources: list[str] | None = None) -> Path:
    """Write ``model`` into ``cache_dir`` as a verified-looking download and add ``name`` to the registry file."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    entry = copy.deepcopy(entry or tiny_entry_template())
    entry["files"] = [{"name": file_name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "sources": sources or [f"file:///nonexistent/{name}/{file_name}"]}]
    registry: dict[str, Any] = {"version": 1, "models": {}}
    if registry_path.exists():
        registry = yaml.safe_load(registry_path.read_text())
    registry["models"][name] = entry
    registry.setdefault("default_model", name)
    registry_path.write_text(yaml.safe_dump(registry, sort_keys=False))
    target = cache_dir / name / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


@dataclass(frozen=True)
class ServeWorld:
    """The tiny twin as registry model ``tiny``, converted to its IR, and three PNG images (for the serve tests)."""

    registry: Path
    cache: Path
    images: tuple[Path, ...]

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]


def serve_world(root: Path) -> ServeWorld:
    from PIL import Image

    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.imaging import generated_images
    from ssdtool.registry import load_registry
    from ssdtool.synthetic import TwinSpec, build_model

    registry, cache = root / "registry.yml", root / "cache"
    install_model(cache, registry, "tiny", build_model(TwinSpec(variant="tiny")))
    convert(load_registry(registry).model("tiny"), Cache.at(cache), ConvertOptions(verify=False))
    images = []
    for index, size in enumerate(((640, 480), (300, 300), (333, 500))):
        path = root / f"image-{index}.png"
        Image.fromarray(generated_images(1, seed=40 + index, size=size)[0]).save(path)
        images.append(path)
    return ServeWorld(registry, cache, tuple(images))
