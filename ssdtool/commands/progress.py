"""Progress for people and for logs, on stderr: one renderer per kind of event, chosen by ``--progress``.

``auto`` draws tqdm bars when stderr is a terminal and writes JSON lines (one event per line) otherwise, so a CI
log gets machine-readable progress; ``bar``, ``json``, ``log`` (plain log lines) and ``none`` force a kind. Every
renderer serializes its output with a lock: download events arrive from worker threads.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssdtool.commands.common import AppContext, human_size, printable
from ssdtool.constants import Int8Phase, ProgressMode

if TYPE_CHECKING:
    from ssdtool.download import DownloadEvent
    from ssdtool.quantize import QuantizeEvent

log = logging.getLogger("ssdtool")

def stderr_is_terminal() -> bool:
    """Progress bars are for people watching a terminal, never for logs or pipes."""
    return sys.stderr.isatty()


def resolve_mode(mode: str, quiet: bool = False) -> str:
    """``auto`` as ``bar`` or ``json``; ``none`` when ``quiet``."""
    if quiet:
        return ProgressMode.NONE.value
    if mode == ProgressMode.AUTO:
        return (ProgressMode.BAR if stderr_is_terminal() else ProgressMode.JSON).value
    return mode


def _json_line(data: dict[str, Any], lock: threading.Lock) -> None:
    line = json.dumps(data, sort_keys=False, default=str)
    with lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class JsonLines:
    """One JSON object per event on stderr, for CI logs and wrappers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, event: DownloadEvent) -> None:
        _json_line(event.to_dict(), self._lock)

    def close(self) -> None:
        pass


class LogLines:
    """Plain log lines (start, retries, failures, verified)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, event: DownloadEvent) -> None:
        name = printable(f"{event.model}/{event.file}")
        with self._lock:
            if event.event == "start":
                resume = f" (resuming at {human_size(event.offset or 0)})" if event.offset else ""
                log.info("%s: downloading %s from %s%s", name, human_size(event.size or 0), event.source, resume)
            elif event.event == "source_failed":
                then = f"; retrying in {event.retry_in:.1f} s" if event.retry_in is not None else ""
                log.warning("%s: %s: %s%s", name, event.source, event.reason, then)
            elif event.event == "waiting":
                log.info("%s: waiting for another process (lock %s)", name, event.lock)
            elif event.event == "verified" and not event.cached:
                log.info("%s: verified, %s", name, event.path)

    def close(self) -> None:
        pass


class Bars:
    """A tqdm bar per file on stderr; other events are written above the bars."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bars: dict[tuple[str | None, str | None], Any] = {}

    def __call__(self, event: DownloadEvent) -> None:
        from tqdm import tqdm

        key = (event.model, event.file)
        with self._lock:
            bar = self._bars.get(key)
            if event.event == "start":
                if bar is not None:
                    bar.close()
                self._bars[key] = tqdm(total=event.size, initial=event.offset or 0, desc=printable(event.file),
                                       unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=True,
                                       dynamic_ncols=True, position=len(self._bars))
            elif event.event == "progress" and bar is not None and event.downloaded is not None:
                bar.update(event.downloaded - bar.n)
            elif event.event == "source_failed":
                then = f"; retrying in {event.retry_in:.1f} s" if event.retry_in is not None else ""
                tqdm.write(printable(f"{event.file}: {event.source}: {event.reason}{then}"), file=sys.stderr)
            elif event.event == "waiting":
                tqdm.write(printable(f"{event.file}: waiting for another process (lock {event.lock})"),
                           file=sys.stderr)
            elif event.event == "verified" and bar is not None:
                bar.close()
                del self._bars[key]

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()


DownloadProgress = JsonLines | LogLines | Bars


@dataclass(frozen=True)
class PhaseEvent:
    """Progress of a phase a command drives itself (detect's images), shaped like the library's phase events."""

    phase: str
    done: int
    total: int


def download_progress(mode: str = "auto", quiet: bool = False) -> DownloadProgress | None:
    """A renderer for :mod:`ssdtool.download` events (``download --progress MODE``, and every command that
    downloads on first use); None for ``none`` or when ``quiet``. Bars close themselves when their file is
    verified; call ``close()`` at the end for the rest."""
    kind = resolve_mode(mode, quiet)
    return {"json": JsonLines, "log": LogLines, "bar": Bars}.get(kind, lambda: None)()


def app_download_progress(app: AppContext, mode: str = "auto") -> DownloadProgress | None:
    """The renderer of downloads a command makes on first use (detect, convert, bench), for its ``--progress``."""
    return download_progress(mode, quiet=app.quiet)


def phase_progress(labels: dict[str, str], unit: str | dict[str, str] = "img", mode: str = "auto",
                   quiet: bool = False) -> Callable[[Any], None] | None:
    """A renderer for phased progress events (``phase``, ``done``, ``total``: INT8 calibration and its guard, the
    images of a detect run): a tqdm bar per phase, JSON lines, a log line when a phase starts and ends, or nothing
    (``mode`` as ``--progress``; nothing when quiet). ``unit`` is one unit, or one per phase (default "img").

    A phase that repeats (NNCF's validation runs) numbers its events with ``run``, and the last event of a run may
    carry its result as ``value``: JSON lines include both, a log line is written per run, a bar restarts per run.
    """
    kind = resolve_mode(mode, quiet)
    if kind == "none":
        return None
    units = unit if isinstance(unit, dict) else {}

    def unit_of(phase: str) -> str:
        return units.get(phase, "img") if isinstance(unit, dict) else unit

    def label_of(event: Any) -> str:
        run = getattr(event, "run", None)
        label = labels.get(event.phase, event.phase)
        return label if run is None else f"{label}, run {run}"

    lock = threading.Lock()
    if kind == "json":

        def as_json(event: QuantizeEvent) -> None:
            extra = {key: getattr(event, key) for key in ("run", "value") if getattr(event, key, None) is not None}
            _json_line({"event": "progress", "phase": event.phase, "done": event.done, "total": event.total,
                        **extra}, lock)

        return as_json
    if kind == "log":

        def as_log(event: QuantizeEvent) -> None:
            value = getattr(event, "value", None)
            if value is not None:
                log.info("%s: %d %s, result %.4f", label_of(event), event.total, unit_of(event.phase), value)
            elif getattr(event, "run", None) is None and (event.done == 0 or event.done >= event.total):
                log.info("%s: %d of %d %s", label_of(event), event.done, event.total, unit_of(event.phase))

        return as_log
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def render(event: QuantizeEvent) -> None:
        bar = bars.get(event.phase)
        if getattr(event, "value", None) is not None:
            return  # a run's result: its bar has already finished
        if bar is None:
            bar = bars[event.phase] = tqdm(total=event.total, desc=label_of(event), unit=unit_of(event.phase),
                                           file=sys.stderr, leave=False)
        bar.update(event.done - bar.n)
        if event.done >= event.total:
            bar.close()
            del bars[event.phase]

    return render


def quantize_progress(app: AppContext, mode: str = "auto") -> Callable[[Any], None] | None:
    """The INT8 phases: calibration, NNCF's quantization, the accuracy guard, the runtime check; with an AP budget
    also the FP32 reference, NNCF's validation runs and the latency measurement."""
    labels = {Int8Phase.CALIBRATE: "INT8 calibration", Int8Phase.QUANTIZE: "NNCF quantization",
              Int8Phase.GUARD: "accuracy guard", Int8Phase.REFERENCE: "FP32 reference",
              Int8Phase.VALIDATE: "accuracy control", Int8Phase.LATENCY: "latency cost",
              Int8Phase.CHECK: "runtime check"}
    units = {Int8Phase.QUANTIZE: "step", Int8Phase.LATENCY: "run", Int8Phase.CHECK: "step"}
    return phase_progress({phase.value: label for phase, label in labels.items()},
                          unit={phase.value: unit for phase, unit in units.items()}, mode=mode, quiet=app.quiet)



class LoadGenLines:
    """Progress of a LoadGen test (``bench --scenario``): elapsed time and samples answered, as a tqdm counter
    (``bar``: LoadGen decides when the test ends, so there is no total), JSON lines, or a log line every 30 s."""

    def __init__(self, kind: str, label: str = "LoadGen") -> None:
        self.kind = kind
        self.label = label
        self._lock = threading.Lock()
        self._logged = 0.0
        self._bar: Any = None
        if kind == "bar":
            from tqdm import tqdm

            self._bar = tqdm(desc=label, unit="sample", file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, event: Any) -> None:
        if self._bar is not None:
            self._bar.update(event.completed - self._bar.n)
        elif self.kind == "json":
            _json_line({"event": "progress", "phase": "loadgen", "elapsed_seconds": round(event.elapsed_seconds, 1),
                        "completed": event.completed}, self._lock)
        elif event.elapsed_seconds - self._logged >= 30:
            self._logged = event.elapsed_seconds
            log.info("%s: %.0f s, %d samples answered", self.label, event.elapsed_seconds, event.completed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def loadgen_progress(app: AppContext, mode: str = "auto", label: str = "LoadGen") -> LoadGenLines | None:
    """The renderer of a LoadGen test's progress for ``--progress MODE``; None for ``none`` or when quiet."""
    kind = resolve_mode(mode, app.quiet)
    return None if kind == "none" else LoadGenLines(kind, label)
