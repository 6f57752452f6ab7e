"""``export_model``: the IR of a registry model, laid out for a model server, as a new version of a repository.

The IR comes from :func:`ssdtool.artifacts.model_file` (downloaded and converted on first use) and is copied
byte for byte, so the provenance in its runtime info (source checksum, conversion parameters, parity figures,
weights digest) travels with it; ``<model>/ssdtool-export.json`` adds what the export decided for each version
(format, device, hint, precision and why, digests, time).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdtool import __version__, checked
from ssdtool.cache import Cache
from ssdtool.constants import Backend
from ssdtool.errors import UsageError
from ssdtool.export.layouts import IR_FILES, LAYOUTS, Layout
from ssdtool.export.options import (
    ExportOptions,
    check_storage_uri,
    check_version,
    parse_format,
    served_name,
    serving_settings,
)
from ssdtool.export.repository import Repository, utc_now
from ssdtool.export.signature import Signature, read_signature
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.export")

MANIFEST = "ssdtool-export.json"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote. ``inference_precision`` is the pinned value (None: the server's default), and
    ``precision_reason`` says why; ``files`` are the configuration files written or updated."""

    model: str
    served_name: str
    format: str
    output_dir: Path
    version: int
    replaced: bool
    version_dir: Path
    ir_precision: str
    device: str
    hint: str
    inference_precision: str | None
    precision_reason: str
    storage_uri: str | None
    source_xml: Path
    sha256: dict[str, str]
    signature: Signature
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "served_name": self.served_name, "format": self.format,
            "output_dir": str(self.output_dir), "version": self.version, "replaced": self.replaced,
            "version_dir": str(self.version_dir), "ir_precision": self.ir_precision, "device": self.device,
            "hint": self.hint, "inference_precision": self.inference_precision,
            "precision_reason": self.precision_reason, "storage_uri": self.storage_uri,
            "source_xml": str(self.source_xml), "sha256": dict(self.sha256), "signature": self.signature.to_dict(),
            "files": [str(p) for p in self.files], "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Plan:
    """What an export will do: decided before the conversion, and again under the repository's lock before
    anything is written."""

    version: int
    records: dict[str, Any]


def export_model(entry: ModelEntry, cache: Cache, options: ExportOptions, *, offline: bool | None = None,
                 progress: Callable[[Any], None] | None = None) -> ExportResult:
    """Export ``entry``'s IR (``options.engine.precision``, default the registry's) into ``options.output_dir`` as the
    next version (or the one ``options.version``/``force`` name) in ``options.format``'s layout.

    Everything is checked before anything is written: the options, then the repository (its folder, the model
    folder, ``config.json``, the KServe manifest, the export record, every file to be replaced, the version),
    once before the model is converted (a refusal then costs nothing and leaves no trace) and again under the
    repository's lock. ``progress`` receives download events when the model must be fetched first.
    """
    from ssdtool.artifacts import model_file
    from ssdtool.provenance import WEIGHTS_KEY, read_provenance

    started = time.monotonic()
    export_format = parse_format(options.format)
    layout = LAYOUTS[export_format]
    storage_uri = check_storage_uri(options.storage_uri, export_format)
    settings = serving_settings(options)
    precision, reason = layout.precision(settings)
    name = served_name(options, entry.name)
    check_version(options.version)
    repository = Repository.open(options.output_dir)
    _plan(repository, layout, name, options)

    model = model_file(entry, cache, Backend.OPENVINO, options.engine.precision, offline=offline, progress=progress,
                       image_input=options.engine.image_input)
    provenance = read_provenance(model.path) or {}
    weights = provenance.get(WEIGHTS_KEY) if isinstance(provenance.get(WEIGHTS_KEY), dict) else {}
    signature = read_signature(model.path)
    repository.create()
    with repository.lock(options.lock_timeout):
        plan = _plan(repository, layout, name, options)  # again: another export may have written meanwhile
        version = plan.version
        documents = layout.render(repository, name, signature, settings, storage_uri)
        installed = repository.install_version(
            name, version, {IR_FILES[0]: model.path, IR_FILES[1]: model.path.with_suffix(".bin")},
            expected={IR_FILES[1]: weights["sha256"]} if weights.get("sha256") else None)
        files = [repository.write_text(relative, text) for relative, text in documents.items()]
        record = {"format": export_format.value, "model": entry.name, "ir_precision": model.precision,
                  "device": settings.device, "hint": settings.hint, "inference_precision": precision,
                  "precision_reason": reason, "storage_uri": storage_uri, "sha256": installed.sha256,
                  "image_input": options.engine.image_input,
                  "source_sha256": provenance.get("source_sha256"), "ssdtool": __version__, "exported": utc_now()}
        files.append(_record_version(repository, name, version, plan.records, record))
    verb = "replaced" if installed.replaced else "added"
    log.info("%s version %d of %s in %s (%s)", verb, version, name, repository.root, export_format.value)
    return ExportResult(model=entry.name, served_name=name, format=export_format.value, output_dir=repository.root,
                        version=version, replaced=installed.replaced, version_dir=installed.path,
                        ir_precision=str(model.precision), device=settings.device, hint=settings.hint,
                        inference_precision=precision, precision_reason=reason, storage_uri=storage_uri,
                        source_xml=model.path, sha256=installed.sha256, signature=signature, files=files,
                        seconds=time.monotonic() - started)


def _plan(repository: Repository, layout: Layout, name: str, options: ExportOptions) -> _Plan:
    """Check everything in the repository that an export reads or replaces; the version to write and the
    records of the versions present. Reads only."""
    repository.check_model_dir(name)
    layout.check(repository, name)
    for relative in (*layout.files(name), f"{name}/{MANIFEST}"):
        repository.check_replaceable(relative)
    records = _read_records(repository, name)
    version, _replacing = repository.choose_version(name, options.version, options.force)
    return _Plan(version, records)


def _read_records(repository: Repository, name: str) -> dict[str, Any]:
    """The ``versions`` of ``<name>/ssdtool-export.json`` ({} when there is none); :class:`UsageError` when the
    file is not strict JSON (:func:`ssdtool.checked.loads`, located) or not an export record."""
    relative = f"{name}/{MANIFEST}"
    text = repository.read_text(relative)
    if text is None:
        return {}
    path = repository.root / relative
    fix = (f"fix or remove {path} (it records what earlier exports decided; servers do not read it), or pass "
           "another --output-dir")
    try:
        manifest = checked.loads(text)
    except checked.JsonValueError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); it cannot be updated", hint=fix) from None
    versions = manifest.get("versions", {}) if isinstance(manifest, dict) else None
    if not isinstance(versions, dict):
        raise UsageError(f"{path} is not an ssdtool export record (expected an object with a versions object)",
                         hint=fix)
    return versions


def _record_version(repository: Repository, name: str, version: int, records: dict[str, Any],
                    record: dict[str, Any]) -> Path:
    """Write ``<name>/ssdtool-export.json``: ``records`` of the versions still present, and ``record`` for
    ``version``, in version order."""
    present = {str(v) for v in repository.versions(name)}
    versions = {k: v for k, v in records.items() if k in present}
    versions[str(version)] = record
    ordered = dict(sorted(versions.items(), key=lambda item: int(item[0])))  # keys of present versions: digits
    return repository.write_text(f"{name}/{MANIFEST}", json.dumps({"model": name, "versions": ordered}, indent=2)
                                 + "\n")
