"""A non-editable wheel carries the one registry file and finds it through importlib.resources."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_models_yml_and_lists_it(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheel_dir),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("ssdtool-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "ssdtool/models.yml" in names
        assert "ssdtool/data/coco_80cl_bkgr.txt" in names
        assert archive.read("ssdtool/models.yml") == (ROOT / "models.yml").read_bytes()
        archive.extractall(tmp_path / "site")
    # Run from the extracted wheel only (not the checkout): -I ignores PYTHONPATH and the current directory.
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
            "import ssdtool, ssdtool.registry as r\n"
            "print(ssdtool.__file__); print(r.packaged_registry_path())\n"
            "from ssdtool.cli import cli\n"
            "cli(['--cache-dir', sys.argv[1], 'models', '--json'], prog_name='ssdtool')")
    result = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "cache")], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    module_file, registry_file, *rest = result.stdout.splitlines()
    assert module_file.startswith(str(tmp_path / "site"))
    assert registry_file == str(tmp_path / "site" / "ssdtool" / "models.yml")
    assert "ssd-resnet34-1200-onnx" in [row["name"] for row in json.loads("\n".join(rest))]
