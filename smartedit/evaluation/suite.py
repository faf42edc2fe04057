"""``smartedit eval``: a folder's edits sent to a running server, each measured, and one markdown table.

The folder holds its photos (and masks) and ``edits.json``: a list of edits, each an object with ``image`` (a
file in the folder), optionally ``mask`` (one too), ``name`` (the table's label) and ``pipeline``, and any of
the wire contract's parameters (``prompt``, ``task``, ``source_prompt``, ``seed``, ...) as the SDK takes them::

    [{"image": "room.png", "task": "text_edit", "source_prompt": "a room", "prompt": "a room at sunset", "seed": 7},
     {"image": "room.png", "mask": "chair.png", "prompt": "a red chair", "seed": 7}]

For each edit: PSNR and SSIM outside the mask (the pixels the server promises to keep: the mask as the edit's
record shapes it, grown by its feather; smartedit.edit.masks), inf and 1 when they are byte-exact; for a text
edit, the reconstruction (the same edit with ``prompt`` = ``source_prompt`` and no guidance) against the photo
over the edited area; with a CLIP model, the CLIP score of the result against its prompt; the seconds it took.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from smartedit.edit.masks import feather, repaint_area
from smartedit.edit.parameters import EditParameters
from smartedit.edit.photos import decode_photo
from smartedit.edit.tasks import TEXT_EDIT
from smartedit.evaluation.metrics import ClipScorer, psnr, ssim
from smartedit_client import _contract as wire

EDITS_FILE = "edits.json"
# An edit's keys besides the contract's parameters.
OWN_KEYS = ("image", "mask", "name", "pipeline")


@dataclasses.dataclass(frozen=True)
class EvalEdit:
    """One edit of the folder: its files and what the SDK is sent."""

    name: str
    image: Path
    mask: Path | None
    options: dict[str, Any]  # prompt, the other wire parameters, pipeline


@dataclasses.dataclass(frozen=True)
class EditFigures:
    """What one edit measured (nan: not measured for it)."""

    name: str
    task: str
    prompt: str
    outside_psnr: float
    outside_ssim: float
    reconstruction_psnr: float
    reconstruction_ssim: float
    clip_score: float
    seconds: float


def read_edits(path: str | Path) -> list[EvalEdit]:
    """The edits of ``path``: a folder holding ``edits.json``, or that file.

    Raises:
        ValueError: naming the entry and the key that is wrong (an unknown key, a missing image or prompt, a file
            that is not there).
    """
    path = Path(path)
    file = path / EDITS_FILE if path.is_dir() else path
    try:
        entries = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: {error}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{file}: must hold a non-empty JSON list of edits")
    known = set(OWN_KEYS) | {spec.name for spec in wire.PARAMETERS}
    edits = []
    for index, entry in enumerate(entries):
        where = f"{file}: edit {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be an object, got {entry!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; an edit takes {', '.join(OWN_KEYS)} and the wire "
                             f"parameters ({', '.join(spec.name for spec in wire.PARAMETERS)})")
        for key in ("image", "prompt"):
            if key not in entry:
                raise ValueError(f"{where}: {key!r} is required")
        files = {key: file.parent / entry[key] for key in ("image", "mask") if entry.get(key)}
        for key, found in files.items():
            if not found.is_file():
                raise ValueError(f"{where}: {key} {str(found)!r} is not a file")
        options = {key: value for key, value in entry.items() if key not in ("image", "mask", "name")}
        edits.append(EvalEdit(name=entry.get("name") or f"{index + 1}: {files['image'].name}", image=files["image"],
                              mask=files.get("mask"), options=options))
    return edits


def measure(client, edit: EvalEdit, clip: ClipScorer | None = None) -> EditFigures:
    """Send ``edit`` through ``client`` (a ``smartedit_client.InpaintClient``) and measure its result."""
    image_bytes = edit.image.read_bytes()
    mask_bytes = edit.mask.read_bytes() if edit.mask else None
    started = time.perf_counter()
    result = client.inpaint(image=image_bytes, mask_image=mask_bytes, **edit.options)
    seconds = time.perf_counter() - started
    record = EditParameters(**result.parameters["parameters"])
    photo = decode_photo(image_bytes, mask_bytes, None)
    original, edited = np.asarray(photo.rgb.convert("RGB")), np.asarray(result.image.convert("RGB"))
    # What the server may change: the repainted area as the record shapes it, and its feathered edge.
    changed = feather(repaint_area(photo, record), record.mask_blur) > 0 if mask_bytes else None
    kept = None if changed is None else ~changed
    reconstruction = (math.nan, math.nan)
    if record.task == TEXT_EDIT:
        again = client.inpaint(image=image_bytes, mask_image=mask_bytes,
                               **{**edit.options, "prompt": record.source_prompt, "guidance_scale": 1.0})
        rebuilt = np.asarray(again.image.convert("RGB"))
        reconstruction = (psnr(original, rebuilt, changed), ssim(original, rebuilt, changed))
    return EditFigures(
        name=edit.name, task=record.task, prompt=record.prompt,
        outside_psnr=math.nan if kept is None else psnr(original, edited, kept),
        outside_ssim=math.nan if kept is None else ssim(original, edited, kept),
        reconstruction_psnr=reconstruction[0], reconstruction_ssim=reconstruction[1],
        clip_score=math.nan if clip is None else clip(result.image, record.prompt),
        seconds=seconds,
    )


def _cell(value: float, digits: int) -> str:
    if math.isnan(value):
        return "—"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


COLUMNS = ("edit", "task", "prompt", "outside PSNR (dB)", "outside SSIM", "reconstruction PSNR (dB)",
           "reconstruction SSIM", "CLIP score", "seconds")


def markdown_table(rows: list[EditFigures]) -> str:
    """The figures as a markdown table, one row per edit and their means last (of the edits measured)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]

    def line(name, task, prompt, figures):
        cells = [_cell(figures[0], 2), _cell(figures[1], 4), _cell(figures[2], 2), _cell(figures[3], 4),
                 _cell(figures[4], 2), _cell(figures[5], 2)]
        lines.append("| " + " | ".join([name, task, prompt.replace("|", "\\|")] + cells) + " |")

    fields = ("outside_psnr", "outside_ssim", "reconstruction_psnr", "reconstruction_ssim", "clip_score", "seconds")
    for row in rows:
        line(row.name, row.task, row.prompt, [getattr(row, name) for name in fields])
    means = []
    for name in fields:
        measured = [getattr(row, name) for row in rows if not math.isnan(getattr(row, name))]
        means.append(float(np.mean(measured)) if measured else math.nan)
    line(f"mean of {len(rows)}", "", "", means)
    return "\n".join(lines) + "\n"
