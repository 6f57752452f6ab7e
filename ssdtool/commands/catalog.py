"""``ssdtool models`` and ``ssdtool info``: what the registry holds and what is in the cache."""

from __future__ import annotations

from typing import Any

import click

from ssdtool.commands.common import app_context, echo_json, format_table, human_size, printable, want_json
from ssdtool.commands.options import json_option, model_argument


@click.command("models")
@json_option()
@click.pass_context
def models_command(ctx: click.Context, as_json: bool) -> None:
    """List the models in the registry and their state in the cache.

    State is missing, partial (an interrupted download), downloaded, or converted (an OpenVINO IR exists).
    """
    from ssdtool.catalog import list_models

    want_json(ctx, as_json)
    app = app_context(ctx)
    summaries = list_models(app.registry(), app.cache())
    if as_json:
        echo_json([s.to_dict() for s in summaries])
        return
    rows = [(s.name + (" *" if s.default else ""), s.task, human_size(s.size), s.state) for s in summaries]
    click.echo(format_table(("NAME", "TASK", "SIZE", "STATE"), rows))
    click.echo(f"(* default model; cache: {app.cache().root})", err=True)


@click.command("info")
@model_argument
@json_option("Print JSON on stdout.")
@click.pass_context
def info_command(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show everything the registry says about NAME (default model), where its files are and their state."""
    from ssdtool.catalog import model_info

    want_json(ctx, as_json)
    app = app_context(ctx)
    info = model_info(app.registry(), app.cache(), name)
    data = info.to_dict()
    if as_json:
        echo_json(data)
        return
    click.echo("\n".join(printable(line) for line in _format_info(data).splitlines()))


def _format_outputs(outputs: dict[str, Any]) -> str:
    if outputs.get("form") == "heads" and outputs.get("heads"):
        heads = outputs["heads"]
        boxes, selection = heads["default_boxes"], heads["selection"]
        given = [f"{key} {list(value) if isinstance(value, (list, tuple)) else value}"
                 for key, value in boxes.items() if value is not None]
        return (f"  outputs: heads form: conf {list(heads['conf'])}, loc {list(heads['loc'])}\n"
                f"           default boxes: {', '.join(given)} (the rest: the reference for the input size)\n"
                f"           selection: score > {selection['score_threshold']}, IoU {selection['iou_threshold']}, "
                f"{selection['per_class']} per class, {selection['max_detections']} in all; decoded into "
                f"{outputs['boxes']}, {outputs['labels']}, {outputs['scores']}")
    return (f"  outputs: boxes={outputs['boxes']} labels={outputs['labels']} scores={outputs['scores']} "
            f"({outputs['box_format']}, {outputs['box_units']}, label offset {outputs['label_offset']})")


def _format_info(data: dict[str, Any]) -> str:
    entry_input, outputs, convert = data["input"], data["outputs"], data["convert"]
    lines = [
        f"{data['name']}{'  (default model)' if data['default'] else ''}",
        f"  description:  {data['description']}",
        f"  task:         {data['task']}",
        f"  license:      {data['license']}",
        f"  state:        {data['state']}",
        f"  cache folder: {data['cache_dir']}",
        "  files:",
    ]
    for f in data["files"]:
        lines.append(f"    {f['name']}  {human_size(f['size'])} ({f['size']} bytes)  [{f['state']}]")
        lines.append(f"      path:   {f['path']}")
        for algo in ("sha256", "sha384"):
            if f[algo]:
                lines.append(f"      {algo}: {f[algo]}")
        for index, url in enumerate(f["sources"], start=1):
            lines.append(f"      source {index}: {url}")
    lines += [
        f"  input:   {entry_input['name']} {list(entry_input['shape'])} {entry_input['layout']} "
        f"{entry_input['color_order']}, mean {list(entry_input['mean'])}, scale {list(entry_input['scale'])}, "
        f"resize {entry_input['resize'][0]}x{entry_input['resize'][1]} {entry_input['interpolation']}",
        _format_outputs(outputs),
        f"  labels:  {data['labels']}",
        f"  convert: {convert['color_order']} input, {convert['output_count']} outputs, "
        f"default precision {convert['precision']}",
    ]
    if data["converted"]:
        lines.append("  converted:")
        for record in data["converted"]:
            lines.append(f"    {record['precision']}: {record['path']}")
            for key, value in (record.get("provenance") or {}).items():
                if key == "accuracy_control" and isinstance(value, dict):
                    from ssdtool.accuracy_budget import describe

                    lines.append(f"      {key}: " + "\n        ".join(describe(value) or []))
                elif key == "runtime_checks" and isinstance(value, list):
                    from ssdtool.precision import read_checks

                    checks, unusable = read_checks({key: value})
                    lines.append(f"      {key}: " + ("none" if not checks and not unusable else ""))
                    lines.extend(f"        {check.summary()}" for check in checks)
                    lines.extend(f"        {record.summary()}" for record in unusable)
                else:
                    lines.append(f"      {key}: {value}")
    return "\n".join(lines)


COMMANDS = [models_command, info_command]
