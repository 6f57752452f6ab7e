"""The one exception hierarchy of ssdtool.

Every error a user can meet is a subclass of :class:`SsdtoolError` and carries its exit code, so the CLI maps
errors to exit codes in exactly one place (``ssdtool.cli``) and Python callers can catch one family at a time.
Messages follow one pattern: what went wrong, what was expected, what was found; ``hint`` says what to do next.

Exit codes (documented in README.md; keep the table there in step):

====  ==========================  ==========================================================
code  class                       meaning
====  ==========================  ==========================================================
0     -                           success
1     (any other exception)       unexpected error; rerun with --debug for the traceback
2     UsageError                  bad command line (also click's own usage errors)
3     RegistryError               models.yml (or --registry FILE) is invalid
4     UnknownModelError           the model name is not in the registry
5     CacheError                  the cache directory cannot be used
10    NetworkError                every source failed to deliver the file
11    ChecksumError               every source delivered bytes with the wrong size or checksum
12    OfflineError                a needed file is missing and the network is not allowed
13    LockTimeoutError            another process holds the download/convert lock too long
14    VerifyError                 ``ssdtool verify`` found cached files that are bad or missing
20    ConversionError             OpenVINO conversion failed
21    ParityError                 the converted IR disagrees with onnxruntime (nothing installed)
22    ModelFormatError            a model file is not a valid ONNX/IR or lacks expected tensors
23    DependencyError             an optional or required library is missing or broken
24    AccuracyError               INT8 accuracy guard failed, or an AP budget cannot be met (nothing installed)
30    InputError, ImageError      some inputs (images) could not be processed
31    BackendError                unknown/unusable backend or device, or an inference precision it cannot run
32    ServerError                 an inference server refused or failed a request (``--server``)
33    AnnotationError             a COCO annotation, results or MLPerf accuracy file is not what it should be
130   (KeyboardInterrupt)         interrupted; partial downloads are kept for resume
====  ==========================  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
#: Problems listed in one RegistryError message (all of them stay in ``RegistryError.problems``).
MAX_LISTED_PROBLEMS = 50


class SsdtoolError(Exception):
    """Base class: a failure the user can act on. ``hint`` names the next step (a command or a flag)."""

    exit_code: int = EXIT_UNEXPECTED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, object]:
        """Machine-readable form for ``--json`` outputs."""
        return {
            "error": type(self).__name__,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
        }


class UsageError(SsdtoolError):
    exit_code = 2


class RegistryError(SsdtoolError):
    """The registry file is malformed. ``problems`` lists every located problem found.

    The message lists the first :data:`MAX_LISTED_PROBLEMS` (a broken generated registry can have millions).
    """

    exit_code = 3

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = "invalid model registry" if count == 1 else f"invalid model registry ({count} problems)"
        listed = [f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if count > MAX_LISTED_PROBLEMS:
            listed.append(f"  ... and {count - MAX_LISTED_PROBLEMS} more")
        super().__init__(header + ":\n" + "\n".join(listed), hint=hint)


class UnknownModelError(SsdtoolError):
    exit_code = 4


class CacheError(SsdtoolError):
    exit_code = 5


class DownloadError(SsdtoolError):
    """Base of the download family."""

    exit_code = 10


class NetworkError(DownloadError):
    exit_code = 10


class ChecksumError(DownloadError):
    exit_code = 11


class OfflineError(DownloadError):
    exit_code = 12


class LockTimeoutError(DownloadError):
    exit_code = 13


class VerifyError(DownloadError):
    exit_code = 14


class ConversionError(SsdtoolError):
    exit_code = 20


class ParityError(ConversionError):
    exit_code = 21


class ModelFormatError(SsdtoolError):
    exit_code = 22


class DependencyError(SsdtoolError):
    exit_code = 23


class AccuracyError(ConversionError):
    exit_code = 24


class InputError(SsdtoolError):
    exit_code = 30


class ImageError(InputError):
    """One image cannot be used: missing, unreadable, empty, not an image, truncated, or too large.

    Detection reports it per image and goes on; the command then exits with InputError's code.
    """

    exit_code = 30


class BackendError(SsdtoolError):
    exit_code = 31


class ServerError(SsdtoolError):
    """An Open Inference Protocol server answered a request with an error (4xx, 5xx after the retries), a redirect,
    or something the model cannot return (too large, not a v2 response, non-finite or out-of-range numbers). Servers
    that cannot be reached at all (or never finish an answer) are a :class:`NetworkError`."""

    exit_code = 32

class AnnotationError(SsdtoolError):
    """A COCO annotation file, COCO results file or MLPerf accuracy log is invalid. ``problems`` lists every
    located problem found (``annotations[12].bbox: ...``); the message lists the first
    :data:`MAX_LISTED_PROBLEMS`."""

    exit_code = 33

    def __init__(self, path: str, problems: list[str], *, hint: str | None = None) -> None:
        self.path = path
        self.problems = list(problems)
        count = len(self.problems)
        header = f"invalid {path}" if count == 1 else f"invalid {path} ({count} problems)"
        listed = [f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if count > MAX_LISTED_PROBLEMS:
            listed.append(f"  ... and {count - MAX_LISTED_PROBLEMS} more")
        super().__init__(header + ":\n" + "\n".join(listed), hint=hint)


def all_error_classes() -> list[type[SsdtoolError]]:
    """Every error class, base first; used by the docs test that keeps README's exit-code table true."""
    found: list[type[SsdtoolError]] = []
    pending: list[type[SsdtoolError]] = [SsdtoolError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
