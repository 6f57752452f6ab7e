"""The one library call: :func:`run_loadgen` runs a LoadGen scenario on an ssdtool engine and reports it.

Everything is checked before LoadGen starts: the settings (:func:`~ssdtool.loadgen.settings.build_settings`) and
the places the logs will go (no link, folder, device or FIFO, and none of the run's inputs, at any of LoadGen's
file names in the output folder). LoadGen writes its logs into a new hidden folder inside the output folder; only
a test that ended without a failure has its files moved to their final names there, after the same check of
every name again: an earlier summary is removed first, then the accuracy log and the detail are moved, and the
summary, the file that claims a result, last. A failure or an interrupt removes the hidden folder, so no
half-written log is ever left where a result is expected; files of an earlier run stay as they were.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssdtool import artifacts, fsutil
from ssdtool.backends import open_engine, prepare
from ssdtool.backends.spec import EngineSpec, ModelFile, RunInfo, takes_engine
from ssdtool.bench import BACKENDS as BENCH_BACKENDS
from ssdtool.cache import Cache
from ssdtool.constants import Backend, LoadGenMode, LoadGenScenario, PerformanceHint
from ssdtool.errors import BackendError, DependencyError, SsdtoolError, UsageError
from ssdtool.loadgen.qsl import SampleLibrary, image_files, library_size
from ssdtool.loadgen.settings import SettingsOverrides, build_settings, describe_settings
from ssdtool.loadgen.summary import SUMMARY_FILE, LoadGenReport, RunConfig, read_results
from ssdtool.loadgen.sut import EngineSut, Failure
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:
    from ssdtool.backends import Engine

#: LoadGen's files, in the order they are moved into place (the summary, which claims the result, last).
RESULT_FILES = ("mlperf_log_accuracy.json", "mlperf_log_trace.json", "mlperf_log_detail.txt",
                "mlperf_log_summary.txt")
PROGRESS_INTERVAL = 0.5
#: How long a failed or interrupted test may take to wind down before the call returns without it.
INTERRUPT_GRACE = 3.0


#: LoadGen's engine unless told otherwise: OpenVINO, as ``bench``.
LOADGEN_ENGINE = EngineSpec(backend=Backend.OPENVINO.value)


@takes_engine
@dataclass(frozen=True)
class LoadGenOptions:
    """A LoadGen run: the scenario and mode, where the logs go, the engine (as ``bench``'s, but with the
    compiled-model cache: LoadGen times no load; its fields may be given as keywords), the samples and the settings
    (:class:`~ssdtool.loadgen.settings.SettingsOverrides`). The hint follows the scenario: latency for
    SingleStream, throughput for the others."""

    scenario: str
    output_dir: Path
    mode: str = LoadGenMode.PERFORMANCE.value
    engine: EngineSpec = LOADGEN_ENGINE
    offline: bool = False
    images: Path | None = None
    annotations: Path | None = None
    settings: SettingsOverrides = field(default_factory=SettingsOverrides)


@dataclass(frozen=True)
class LoadGenProgress:
    """Sent every half second while the test runs: seconds since it started, samples answered."""

    elapsed_seconds: float
    completed: int


_ABANDONED: list[threading.Event] = []


def loadgen_still_running() -> bool:
    """Whether a failed or interrupted test left LoadGen running its schedule (it ends when the schedule does).

    A process must then end with ``os._exit``: the C++ runtime aborts a normal exit while LoadGen's threads run.
    ``ssdtool bench`` does that; a Python caller that catches the error can simply go on.
    """
    return any(not finished.is_set() for finished in _ABANDONED)


def parse_scenario(value: str) -> LoadGenScenario:
    try:
        return LoadGenScenario.parse(value, "scenario")  # type: ignore[return-value]
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --scenario SingleStream, MultiStream, Server or Offline") from None


def parse_mode(value: str) -> LoadGenMode:
    try:
        return LoadGenMode.parse(value, "mode")  # type: ignore[return-value]
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --mode performance or accuracy") from None


def import_loadgen() -> Any:
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise DependencyError(f"cannot import mlperf_loadgen (MLCommons LoadGen): {exc}",
                              hint="install it with pip install 'ssdtool[loadgen]'") from exc
    return mlperf_loadgen


def _scratch_folder(output_dir: Path) -> Path:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return fsutil.make_temporary_folder(output_dir, ".loadgen-")
    except OSError as exc:
        raise UsageError(f"cannot write LoadGen's logs to {output_dir}: {exc.strerror or exc}",
                         hint="give --output-dir a folder you can write (it is created when missing)") from exc


def _engine(model: ModelFile, spec: EngineSpec, cache: Cache) -> tuple[Engine, int, RunInfo]:
    """The engine for the scenario's hint, the requests to keep in flight, and what runs."""
    engine, info = open_engine(model, spec, cache)
    requests = 1 if spec.hint == PerformanceHint.LATENCY else (spec.requests or engine.optimal_requests)
    return engine, requests, info


def _run_test(lg: Any, sut: EngineSut, library: SampleLibrary, settings: Any, scratch: Path, failure: Failure,
              progress: Callable[[LoadGenProgress], None] | None) -> float:
    """LoadGen's test in a thread of its own, so this thread can report progress and take an interrupt."""
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(scratch)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.log_output.copy_detail_to_stdout = False
    log_settings.enable_trace = False

    def load(indices: list[int]) -> None:
        try:
            if not failure:
                library.load(indices)
        except BaseException as exc:  # never into LoadGen
            failure.record(exc)

    def unload(indices: list[int]) -> None:
        try:
            library.unload(indices)
        except BaseException as exc:
            failure.record(exc)

    sut_handle = lg.ConstructSUT(sut.issue, sut.flush)
    qsl_handle = lg.ConstructQSL(library.total_count, settings.performance_sample_count_override, load, unload)
    finished = threading.Event()  # not Thread.is_alive: an interrupted join() makes that False too early

    def start_test() -> None:
        try:
            lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings)
        except BaseException as exc:
            failure.record(exc)
        finally:
            finished.set()

    test = threading.Thread(target=start_test, name="ssdtool-loadgen", daemon=True)
    began = time.perf_counter()
    try:
        test.start()
        try:
            while not finished.wait(PROGRESS_INTERVAL) and not failure:
                if progress is not None:
                    progress(LoadGenProgress(time.perf_counter() - began, sut.completed))
        except BaseException as exc:  # Ctrl-C: answer everything at once so LoadGen can end, then re-raise
            failure.record(exc)
            finished.wait(INTERRUPT_GRACE)
            raise
        if failure:
            finished.wait(INTERRUPT_GRACE)
    finally:
        sut.close()
        if finished.is_set():
            lg.DestroyQSL(qsl_handle)
            lg.DestroySUT(sut_handle)
        else:
            # LoadGen still runs its schedule (Server's arrivals are timed), each query answered at once by the
            # failed SUT; destroying the SUT under it would crash, so both are left to the process's exit.
            _ABANDONED.append(finished)
    return time.perf_counter() - began


Inputs = list[fsutil.InputPath]


def _run_inputs(options: LoadGenOptions, files: list[Path] | None) -> Inputs:
    """The files this run reads, none of which a log may replace."""
    inputs: Inputs = []
    if options.settings.user_conf is not None:
        inputs.append(fsutil.InputPath(Path(options.settings.user_conf), "the --user-conf file"))
    if options.annotations is not None:
        inputs.append(fsutil.InputPath(Path(options.annotations), "the --annotations file"))
    inputs.extend(fsutil.InputPath(path, "an image of --images") for path in files or ())
    return inputs


def _check_destinations(output_dir: Path, names: tuple[str, ...], inputs: Inputs) -> None:
    """Every final name is free, or a regular file that is no input: checked for all before any is replaced."""
    if not output_dir.is_dir():
        return  # created later (or refused then, when something else is in the way)
    for name in names:
        target = output_dir / name
        if reason := fsutil.replace_refusal(target, inputs):
            raise UsageError(f"cannot put LoadGen's {name} in {output_dir}: {target} is in the way ({reason}); "
                             "nothing there was replaced",
                             hint="move it away, or give another --output-dir")


def _publish(scratch: Path, output_dir: Path, inputs: Inputs) -> list[Path]:
    """Move LoadGen's files to their final names (every name checked first), the summary last; returns the final
    paths."""
    names = tuple(name for name in RESULT_FILES
                  if (scratch / name).is_file()
                  and ((scratch / name).stat().st_size > 0 or name != "mlperf_log_trace.json"))
    _check_destinations(output_dir, names, inputs)
    published = []
    try:
        # The summary claims a result: an earlier one goes before any file of this run arrives, so a summary in
        # the folder always sits beside its own run's detail and accuracy log, even if a move below fails.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(output_dir / SUMMARY_FILE)
        for name in names:
            target = output_dir / name
            os.replace(scratch / name, target)
            published.append(target)
    except OSError as exc:
        raise UsageError(f"cannot put LoadGen's logs in {output_dir}: {exc.strerror or exc}",
                         hint="check the folder (space, permissions) and rerun") from exc
    finally:
        fsutil.fsync_folder(output_dir)
    return published


def run_loadgen(entry: ModelEntry, cache: Cache, options: LoadGenOptions, *,
                progress: Callable[[LoadGenProgress], None] | None = None,
                download_progress: Callable[[Any], None] | None = None) -> LoadGenReport:
    """Run ``options.scenario`` in ``options.mode`` with MLCommons LoadGen on ``entry`` and return the report.

    The model is downloaded or converted first when missing (as ``bench``). LoadGen's logs end up in
    ``options.output_dir``. ``progress`` receives :class:`LoadGenProgress` from the calling thread while the
    test runs. Raises :class:`~ssdtool.errors.UsageError` for a setting out of bounds (flag, user.conf or
    default; see :mod:`ssdtool.loadgen.limits`), an unwritable output folder or something in the way of a log,
    :class:`~ssdtool.errors.DependencyError` without LoadGen, and the first error met during the test.
    """
    scenario, mode = parse_scenario(options.scenario), parse_mode(options.mode)
    hint = PerformanceHint.LATENCY if scenario == LoadGenScenario.SINGLE_STREAM else PerformanceHint.THROUGHPUT
    spec = prepare(options.engine.replace(hint=hint.value), backends=BENCH_BACKENDS)
    options.settings.check(scenario)
    if options.annotations is not None and options.images is None:
        raise UsageError("--annotations needs --images (the folder holding the annotated images)",
                         hint="add --images DIR")
    files = image_files(Path(options.images), options.annotations) if options.images is not None else None
    output_dir = Path(options.output_dir)
    inputs = _run_inputs(options, files)
    _check_destinations(output_dir, RESULT_FILES, inputs)
    lg = import_loadgen()
    settings = build_settings(lg, scenario, mode, options.settings, library_size(entry, files))
    scratch = _scratch_folder(output_dir)
    try:
        model = artifacts.model_file(entry, cache, spec, offline=options.offline, progress=download_progress)
        library = SampleLibrary(entry, model.form, files)
        engine, requests, info = _engine(model, spec, cache)
        failure = Failure()
        sut = EngineSut(lg, engine, library, requests, failure)
        duration = _run_test(lg, sut, library, settings, scratch, failure, progress)
        if failure.error is not None:
            error = failure.error
            if isinstance(error, SsdtoolError | KeyboardInterrupt):
                raise error
            raise BackendError(f"the system under test failed during the LoadGen run: {error}",
                               hint="rerun with --debug for the traceback") from error
        if not (scratch / SUMMARY_FILE).is_file():
            raise BackendError(f"LoadGen wrote no summary in {scratch}; its messages on stderr say why",
                               hint="check the settings (--user-conf, --min-queries) and rerun")
        published = _publish(scratch, output_dir, inputs)
    finally:
        fsutil.remove_tree(scratch)
    config = RunConfig(
        model=entry.name, backend=info.backend, precision=info.weights, device=info.device,
        model_path=info.model_path, requests=requests, streams=engine.streams, threads=engine.threads,
        inference_precision=engine.inference_precision,
        inference_precision_requested=info.inference_precision_requested,
        inference_precision_reason=info.inference_precision_reason, samples=library.total_count,
        sample_source=str(options.annotations or options.images or "generated images"),
        settings=describe_settings(settings, scenario))
    return read_results(output_dir, config, duration, [str(p) for p in published], scenario.value, mode.value)
