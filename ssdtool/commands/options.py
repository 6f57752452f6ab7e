"""Option bundles shared by several commands, as decorators, so a flag means the same everywhere it appears.

Imports nothing heavy and nothing from :mod:`ssdtool.cli` (which imports the command modules).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ssdtool.commands.common import complete_model_names
from ssdtool.constants import (
    BACKEND_CHOICES,
    BACKOFF_CAP,
    DEFAULT_BACKOFF,
    DEFAULT_DEVICE,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MIRROR_ENV,
    OFFLINE_ENV,
    STALL_MIN_BYTES,
    Backend,
    InferencePrecision,
    IRPrecision,
    PerformanceHint,
    ProgressMode,
    WireProtocol,
)
from ssdtool.errors import LockTimeoutError, OfflineError

if TYPE_CHECKING:
    from ssdtool.serving.protocol import ServerTarget

F = TypeVar("F", bound=Callable[..., Any])


class FiniteFloatRange(click.FloatRange):
    """A float option that must be finite and within its range. click's ``FloatRange`` lets ``nan`` through (every
    comparison with nan is false) and ``inf`` where no maximum is set; every float option uses this type instead,
    with both bounds given, so no command ever computes with a non-finite or absurd value."""

    def __init__(self, min: float, max: float, *, min_open: bool = False, max_open: bool = False) -> None:
        super().__init__(min, max, min_open=min_open, max_open=max_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give one in {self._describe_range()}.", param, ctx)
        return super().convert(number, param, ctx)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def model_argument(func: F) -> F:
    """``[NAME]``: a registry model, the registry's default when left out."""
    return click.argument("name", required=False, shell_complete=complete_model_names)(func)


def model_option(func: F) -> F:
    """``-m/--model NAME`` for commands whose arguments are something else (images)."""
    return click.option("-m", "--model", "model_name", shell_complete=complete_model_names,
                        help="Registry model to run [default: the registry's default model].")(func)


def backend_option(allow_auto: bool = True, default: str = "auto") -> Callable[[F], F]:
    """``-b/--backend``: OpenVINO on the converted IR, onnxruntime on the source ONNX (and ``auto``).

    A plain string (completed by the shell), checked by the library, so an unknown backend is the same error with
    the same exit code (:class:`~ssdtool.errors.BackendError`) from the command line as from Python.
    """
    choices = BACKEND_CHOICES if allow_auto else Backend.values()
    auto = ", or auto (openvino when it can be imported, else onnxruntime)" if allow_auto else ""

    def complete(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
        return [name for name in choices if name.startswith(incomplete)]

    return click.option("-b", "--backend", default=default, show_default=True, shell_complete=complete,
                        help=f"openvino (the converted IR, converted on first use), onnxruntime (the source "
                             f"ONNX){auto}.")


def ir_precision_option(help_text: str = f"Which IR to run with OpenVINO ({IRPrecision.spoken()}) [default: the "
                                         f"registry's, {IRPrecision.FP32}].", default: str | None = None
                        ) -> Callable[[F], F]:
    """``--precision FP32|FP16|INT8``: the IR's weights (case-insensitive; the value reaches the command upper-case)."""
    return click.option("--precision", type=click.Choice(IRPrecision.values(), case_sensitive=False),
                        default=default, show_default=default is not None, callback=_upper, help=help_text)


def inference_precision_option(default: str = InferencePrecision.AUTO.value,
                               help_text: str | None = None) -> Callable[[F], F]:
    """``--inference-precision auto|f32|bf16|f16``: the arithmetic OpenVINO runs the IR in."""
    return click.option(
        "--inference-precision", type=click.Choice(InferencePrecision.values(), case_sensitive=False),
        default=default, show_default=True, callback=_lower,
        help=help_text or "OpenVINO's arithmetic: auto (the device's default, bf16 on CPUs with native bf16, where "
                          "this IR was checked at it on such a device; else f32), or f32, bf16, f16 pinned (an error "
                          "if the device cannot run it). onnxruntime: auto or f32 (what its provider computes).")


def image_input_option(help_text: str = "Run the image-input IR (OpenVINO): whole images in, resized inside the IR "
                                        "(converted on first use, beside the standard IR).") -> Callable[[F], F]:
    """``--image-input``: the image-input IR (u8 NHWC images of any size, resize inside; docs/convert.md)."""
    return click.option("--image-input", is_flag=True, help=help_text)


DEVICE_HELP = ("Where the model runs. OpenVINO: any device it accepts (CPU, GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU, "
               "HETERO:GPU,CPU, ...). onnxruntime: the execution provider (CPU, CUDA, CUDA:1, TensorRT, OpenVINO, "
               "DirectML, CoreML, or any it lists).")


def device_option(help_text: str = DEVICE_HELP) -> Callable[[F], F]:
    return click.option("--device", default=DEFAULT_DEVICE, show_default=True, help=help_text)


def hint_option(help_text: str = f"{PerformanceHint.LATENCY}: one request at a time; {PerformanceHint.THROUGHPUT}: N "
                                 f"requests in parallel [default: {PerformanceHint.LATENCY}].") -> Callable[[F], F]:
    """``--hint latency|throughput``: the performance hint (the value reaches the command lower-case; None when not
    given, so the library's default applies: latency, or throughput for a server taking several requests)."""
    return click.option("--hint", type=click.Choice(PerformanceHint.values(), case_sensitive=False),
                        default=None, callback=_lower, help=help_text)


def offline_option(help_text: str = "Never use the network: the model must already be in the cache."
                   ) -> Callable[[F], F]:
    return click.option("--offline", is_flag=True, envvar=OFFLINE_ENV, show_envvar=True, help=help_text)


def json_option(help_text: str = "Print JSON on stdout instead of a table.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


#: The command parameters :func:`engine_options` folds into one ``engine`` (an EngineSpec).
ENGINE_PARAMETERS = ("backend", "precision", "inference_precision", "device", "hint", "requests", "image_input")


def engine_options(*decorators: Callable[[F], F], **fixed: Any) -> Callable[[F], F]:
    """The engine a command runs, as one ``engine`` parameter (an :class:`~ssdtool.backends.spec.EngineSpec`) built
    from its options: ``decorators`` (default: backend with auto, IR precision, inference precision, device; a
    command passes its own variants, and hint or requests where it has them). ``fixed``: spec fields the command
    sets itself (bench: no compiled-model cache). The library checks the spec, so a bad value is the same error
    from the command line as from Python."""
    chosen = decorators or (backend_option(), ir_precision_option(), inference_precision_option(), device_option())

    def apply(func: F) -> F:
        @functools.wraps(func)
        def fold(*args: Any, **kwargs: Any) -> Any:
            from ssdtool.backends.spec import EngineSpec

            settings = {key: kwargs.pop(key) for key in ENGINE_PARAMETERS if key in kwargs}
            return func(*args, engine=EngineSpec(**{**settings, **fixed}), **kwargs)

        return _stack(*chosen)(fold)  # type: ignore[arg-type]

    return apply


def requests_option(help_text: str) -> Callable[[F], F]:
    """``--requests N``: runs in flight in throughput mode."""
    return click.option("--requests", type=click.IntRange(min=1), metavar="N", help=help_text)


def progress_option(func: F) -> F:
    return click.option(
        "--progress", "progress_mode", type=click.Choice(ProgressMode.values()), default=ProgressMode.AUTO.value,
        show_default=True,
        help="Progress on stderr: a bar (auto: when stderr is a terminal, else JSON lines, one event per line), "
             "JSON lines, log lines, or none.")(func)


def fetch_options(func: F) -> F:
    """How to download: shared by ``download`` and ``verify --repair``."""
    return _stack(
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Cache directory (same as the group option, which SSDTOOL_HOME also sets)."),
        click.option("--mirror", envvar=MIRROR_ENV, show_envvar=True, metavar="URL",
                     help="Base URL or directory tried before the registry's sources, as URL/MODEL/FILE "
                          "(http, https or file://)."),
        offline_option("Never use the network: check what is cached and use only file:// or synthetic sources; "
                       f"fail on anything missing (exit {OfflineError.exit_code})."),
        click.option("--retries", type=click.IntRange(0, 50), default=DEFAULT_RETRIES, show_default=True,
                     help="Further attempts per source after a transient failure (exponential backoff)."),
        click.option("--retry-backoff", "backoff", type=FiniteFloatRange(0, 60), default=DEFAULT_BACKOFF,
                     show_default=True, metavar="SECONDS",
                     help=f"First backoff delay; doubles per retry, with jitter, capped at {BACKOFF_CAP:g} s."),
        click.option("--timeout", type=FiniteFloatRange(0.1, 3600), default=DEFAULT_TIMEOUT, show_default=True,
                     metavar="SECONDS", help="Connect and read timeout; also the stall window: a transfer that "
                     f"receives less than {STALL_MIN_BYTES >> 10} KiB in that many seconds fails (and is retried, "
                     "resuming)."),
        click.option("--lock-timeout", type=FiniteFloatRange(0, 86_400), default=DEFAULT_LOCK_TIMEOUT,
                     show_default=True, metavar="SECONDS",
                     help="Give up waiting for another process's download of the same file after this long without "
                          f"progress (exit {LockTimeoutError.exit_code})."),
        progress_option,
    )(func)


def _upper(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value.upper() if value is not None else None


def _lower(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value.lower() if value is not None else None


def server_options(func: F) -> F:
    """``--server URL`` and how to talk to it: run the model on an Open Inference Protocol server (ssdtool serve,
    OVMS, Triton, KServe) instead of here. :func:`server_target` turns them into a ``ServerTarget``."""
    return _stack(
        click.option("--server", "server_url", metavar="URL", envvar="SSDTOOL_SERVER", show_envvar=True,
                     help="Run the model on this Open Inference Protocol (KServe v2) server, e.g. "
                          "http://127.0.0.1:8080: nothing is downloaded or converted here."),
        click.option("--server-model", metavar="NAME",
                     help="The model's name on the server [default: the registry model's name]."),
        click.option("--concurrency", type=click.IntRange(1, 256), default=None, metavar="N",
                     help="Requests in flight to the server [default: 4 for many images, 1 for one]."),
        click.option("--protocol", "wire_protocol", type=click.Choice(WireProtocol.values()),
                     default=WireProtocol.BINARY.value, show_default=True,
                     help="binary: the binary tensor extension (raw bytes after a JSON header); json: numbers in "
                          "JSON (slower; for servers without the extension)."),
        click.option("--server-timeout", type=FiniteFloatRange(0.1, 3600), default=30.0, show_default=True,
                     metavar="SECONDS", help="Seconds to connect and to wait for each answer."),
        click.option("--server-retries", type=click.IntRange(0, 50), default=6, show_default=True, metavar="N",
                     help="Further attempts after a connection error, a timeout or a 503 (backoff doubles from "
                          "0.2 s, capped at 5 s)."),
    )(func)


def server_target(server_url: str | None, server_model: str | None, concurrency: int | None,
                  wire_protocol: str, server_timeout: float, server_retries: int, default_concurrency: int = 4
                  ) -> ServerTarget | None:
    """The ``ServerTarget`` the server options name, or None without ``--server``."""
    if server_url is None:
        return None
    from ssdtool.serving.protocol import ServerTarget

    return ServerTarget(server_url, server_model, concurrency or default_concurrency, server_timeout,
                        server_retries, protocol=WireProtocol.parse(wire_protocol, "protocol"))
