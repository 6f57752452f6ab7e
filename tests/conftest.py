"""Shared fixtures. The network guard makes any test fail that connects anywhere but loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS, which is already the internet


class NetworkAccessError(AssertionError):
    pass


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_loopback(address):
        raise NetworkAccessError(f"test tried to connect to {address!r}; only loopback is allowed in tests")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_loopback(address):
        raise NetworkAccessError(f"test tried to connect to {address!r}; only loopback is allowed in tests")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    yield


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's real cache, registry override, mirror or proxy settings."""
    for name in ("SSDTOOL_HOME", "SSDTOOL_REGISTRY", "SSDTOOL_MIRROR", "SSDTOOL_OFFLINE",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ------------------------------------------------------------------------------------------------------------------
# Synthetic twin fixtures (issue 3; docs/synthetic.md). Session-scoped, so each twin is built at most once per run:
# the full twin takes about a second to build but 80 MB to write, and every later suite (download, convert, detect)
# shares the same files. Treat the files as read-only.
# ------------------------------------------------------------------------------------------------------------------

from collections.abc import Callable, Iterable  # noqa: E402 - kept in this section; the part above is unchanged

TINY_TWIN_URL = "synthetic:ssd-resnet34?seed=0&variant=tiny"
FULL_TWIN_URL = "synthetic:ssd-resnet34?seed=0"


@pytest.fixture(scope="session")
def tiny_twin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin (300 px, registry entry ``ssd-resnet34-300-synthetic-tiny``) as an ONNX file."""
    from ssdtool.synthetic import build_to_path

    path = tmp_path_factory.mktemp("tiny-twin") / "resnet34-ssd300-synthetic-tiny.onnx"
    build_to_path(TINY_TWIN_URL, path)
    return path


@pytest.fixture(scope="session")
def full_twin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full twin (1200 px, registry entry ``ssd-resnet34-1200-synthetic``) as an ONNX file; mark users slow."""
    from ssdtool.synthetic import build_to_path

    path = tmp_path_factory.mktemp("full-twin") / "resnet34-ssd1200-synthetic.onnx"
    build_to_path(FULL_TWIN_URL, path)
    return path


@pytest.fixture(scope="session")
def planted_tiny_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(planted, heads_only=False) -> Path``: a planted tiny twin file, built once per distinct set."""
    from ssdtool.synthetic import PlantedDetection, TwinSpec, build_to_path

    built: dict[tuple[tuple[PlantedDetection, ...], bool], Path] = {}
    root = tmp_path_factory.mktemp("planted-tiny")

    def factory(planted: Iterable[PlantedDetection], heads_only: bool = False) -> Path:
        key = (tuple(planted), heads_only)
        if key not in built:
            path = root / f"planted-{len(built)}.onnx"
            build_to_path(TwinSpec(variant="tiny", planted=key[0], heads_only=heads_only), path)
            built[key] = path
        return built[key]

    return factory


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which CPU class ran the suite: OpenVINO's default inference precision differs between classes."""
    try:
        import openvino as ov

        core = ov.Core()
        name = core.get_property("CPU", "FULL_DEVICE_NAME")
        default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        capabilities = " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # the header must never stop a run
        return [f"OpenVINO CPU: unknown ({type(exc).__name__}: {exc})"]
    return [f"OpenVINO CPU: {name}; default inference precision {default}; capabilities {capabilities}"]
