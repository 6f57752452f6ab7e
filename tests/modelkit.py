"""Test helpers: registries whose models are small ONNX files already placed in a cache."""

from __future__ import annotations

import copy
import hashlib
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
