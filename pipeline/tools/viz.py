"""``ssmspine info`` and ``ssmspine show``: what an output holds, and what its samples look like.

Why a module of its own: after a conversion the two questions are "is everything there, and what
did it cost?" and "do the images, labels and landmarks still line up?". :func:`info` answers the
first from the manifest and a ``stat`` of the files (no sample is decoded, so it stays instant on a
25 GB output unless ``check=True`` asks for checksums). :func:`show` answers the second with a
figure in the spirit of the dataset README's sample visualization: the three images, the label
map in 11 distinct named colours with a legend, and the bone and disc landmarks drawn on the image.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
backend is selected, no global state is touched, and nothing needs a display. Every figure is
laid out in whole pixels, so a PNG's size is known in advance and a data pixel maps to a known
place in it (which is what the tests check).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from pipeline.atomic import write_bytes_atomic
from pipeline.checksums import file_sha256
from pipeline.errors import OutputError
from pipeline.schema import BONE_NAMES, DISC_NAMES, IMAGE_FIELDS, LABEL_NAMES, FieldSpec
from pipeline.sizes import human_bytes, tree_bytes
from pipeline.store.codecs import Encoding
from pipeline.store.manifest import read_manifest
from pipeline.store.tar_shards import decode_field, member_name
from pipeline.store.zarr_store import STORE_NAME

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: A record as it travels between floors: ``(key, {field: numpy array})``.
Record = tuple[str, Mapping[str, np.ndarray]]

# ------------------------------------------------------------------------------------ info


def info(out: str | os.PathLike, check: bool = False) -> dict[str, Any]:
    """A JSON-able summary of a finished output, and whether its manifest checks out.

    Sizes are measured on disk: Zarr bytes per field are the files under
    ``ssmspine.zarr/<split>/<field>/``; tar bytes per field are the sums of that field's member
    payloads recorded in the manifest (the rest of a tar — headers and padding — is reported as
    ``wds_overhead_bytes``). Ratios against the source are per split too: a source archive's
    bytes are apportioned to splits by how many of its members each split holds
    (``source_apportioned_by``), exact when each archive feeds one split.

    The manifest check is fast by default (every shard and array is there, with its recorded
    size, sample count and byte ranges); ``check=True`` adds the sha256 of every tar shard.
    Members left out under ``--skip-bad`` (``rejected``) and samples converted with content
    warnings are counted, not treated as problems: the conversion reported them already.
    """
    out = Path(out)
    manifest = read_manifest(out)
    schema = {f: FieldSpec.from_json(s) for f, s in manifest["schema"].items()}
    store = out / manifest.get("zarr", STORE_NAME)
    wds_dir = out / manifest.get("wds", {}).get("dir", "wds")
    sources = [{"name": s["name"], "bytes": int(s["bytes"])} for s in manifest["sources"]]
    source_bytes = sum(s["bytes"] for s in sources)
    split_sources, basis = _apportion_sources(manifest)
    problems: list[str] = []
    group = manifest.get("group_samples")
    splits = {
        split: _split_info(out, store, split, entry, schema, split_sources[split], group, check, problems)
        for split, entry in manifest["splits"].items()
    }
    rejected = manifest.get("rejected", [])
    for split, data in splits.items():
        data["rejected"] = sum(1 for r in rejected if r.get("split") == split)
    listed = {s["file"] for entry in manifest["splits"].values() for s in entry["shards"]}
    for path in sorted(wds_dir.glob("*.tar")):
        name = path.relative_to(out).as_posix()
        if name not in listed:
            problems.append(f"{name}: a tar shard the manifest does not list")
    zarr_bytes, wds_bytes = tree_bytes(store), tree_bytes(wds_dir)
    encodings = manifest.get("encodings", {})
    return {
        "dir": str(out),
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "tool_version": manifest.get("tool_version"),
        "created": manifest.get("created"),
        "sources": sources,
        "source_bytes": source_bytes,
        "source_apportioned_by": basis,
        "schema": {
            f: {
                **spec.to_json(),
                "sample_bytes": spec.nbytes,
                "encoding": Encoding.from_json(encodings[f]).describe() if f in encodings else None,
            }
            for f, spec in schema.items()
        },
        "samples": sum(s["samples"] for s in splits.values()),
        "patients": sum(s["patients"] for s in splits.values()),
        "rejected": len(rejected),
        "warnings": sum(s["warnings"] for s in splits.values()),
        "zarr_bytes": zarr_bytes,
        "wds_bytes": wds_bytes,
        "ratio_to_source": {"zarr": _ratio(zarr_bytes, source_bytes), "wds": _ratio(wds_bytes, source_bytes)},
        "splits": splits,
        "check": {
            "ok": not problems,
            "checksums": check,
            "shards": sum(s["shards"]["count"] for s in splits.values()),
            "problems": problems,
        },
    }


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _apportion_sources(manifest: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """Source bytes per split: each archive's bytes shared by its member counts in each split.

    Falls back to sharing the total by sample counts when members name archives the manifest's
    sources do not (an older or hand-edited manifest).
    """
    by_name = {s["name"]: int(s["bytes"]) for s in manifest["sources"]}
    counts: dict[str, dict[str, int]] = {}
    for split, entry in manifest["splits"].items():
        for member in entry.get("members", []):
            per_split = counts.setdefault(member["archive"], {})
            per_split[split] = per_split.get(split, 0) + 1
    splits = manifest["splits"]
    if counts and set(counts) <= set(by_name):
        shares = dict.fromkeys(splits, 0.0)
        for archive, per_split in counts.items():
            total = sum(per_split.values())
            for split, n in per_split.items():
                shares[split] += by_name[archive] * n / total
        return shares, "members per archive"
    total_samples = sum(e["samples"] for e in splits.values())
    total_bytes = sum(by_name.values())
    shares = {s: total_bytes * e["samples"] / total_samples if total_samples else 0.0 for s, e in splits.items()}
    return shares, "samples"


def _split_info(
    out: Path,
    store: Path,
    split: str,
    entry: Mapping[str, Any],
    schema: Mapping[str, FieldSpec],
    source_bytes: float,
    group: int | None,
    check: bool,
    problems: list[str],
) -> dict[str, Any]:
    """Counts, bytes and shards of one split; appends what does not check out to ``problems``."""
    samples = int(entry["samples"])
    shards = sorted(entry["shards"], key=lambda s: s["index"])
    fields = list(schema)
    _check_split_lists(split, entry, shards, group, problems)
    # a member rejected by its task keeps its (empty) Zarr row; one rejected when listing has none
    zarr_rows = samples + sum(len(s.get("rejected", [])) for s in shards)
    payload_bytes = dict.fromkeys(fields, 0)
    disk_sizes = []
    for shard in shards:
        size = _check_shard(out, shard, len(fields), check, problems)
        disk_sizes.append(size)
        for payload in shard.get("payloads", []):
            for j, field in enumerate(fields):
                if 2 * j + 1 < len(payload):
                    payload_bytes[field] += int(payload[2 * j + 1])
    for field, spec in schema.items():
        _check_zarr_array(store, split, field, (zarr_rows, *spec.shape), spec, problems)
    wds_bytes = sum(s for s in disk_sizes if s is not None)
    zarr_bytes = tree_bytes(store / split)
    return {
        "samples": samples,
        "patients": len(set(entry.get("patient", []))),
        "patient_ids": sorted(set(entry.get("patient", []))),
        "warnings": len(entry.get("warnings", {})),
        "source_bytes": round(source_bytes),
        "zarr_bytes": zarr_bytes,
        "wds_bytes": wds_bytes,
        "wds_overhead_bytes": wds_bytes - sum(payload_bytes.values()),
        "ratio_to_source": {"zarr": _ratio(zarr_bytes, source_bytes), "wds": _ratio(wds_bytes, source_bytes)},
        "fields": {
            f: {"decoded": samples * spec.nbytes, "zarr": tree_bytes(store / split / f), "wds": payload_bytes[f]}
            for f, spec in schema.items()
        },
        "shards": {
            "count": len(shards),
            "files": [s["file"] for s in shards],
            "samples": [len(s["keys"]) for s in shards],
            "bytes": [s if s is not None else 0 for s in disk_sizes],
        },
    }


def _check_split_lists(
    split: str, entry: Mapping[str, Any], shards: Sequence[Mapping], group: int | None, problems: list[str]
) -> None:
    """The split's per-sample lists agree with each other and with its shards, in order.

    Shard ``i`` covers Zarr rows ``i * group`` on; each sample's row (``rows``, where the
    manifest has them) lies in its shard's range, so rejected members leave gaps, not shifts.
    """
    keys = list(entry["keys"])
    if int(entry["samples"]) != len(keys):
        problems.append(f"split {split}: {entry['samples']} samples, but {len(keys)} keys")
    for name in ("patient", "aug", "members", "rows"):
        if name in entry and len(entry[name]) != len(keys):
            problems.append(f"split {split}: {len(entry[name])} {name} entries for {len(keys)} keys")
    position = 0
    for i, shard in enumerate(shards):
        n, start = len(shard["keys"]), shard["start"]
        if shard["index"] != i:
            problems.append(f"{shard['file']}: shard index {shard['index']}, expected {i} (a shard is missing)")
        expected_start = i * group if group else position
        if start != expected_start:
            problems.append(f"{shard['file']}: starts at row {start}, expected {expected_start}")
        rows = shard.get("rows") or list(range(start, start + n))
        end = start + (group or n)
        if len(rows) != n or any(not start <= r < end for r in rows) or rows != sorted(set(rows)):
            problems.append(f"{shard['file']}: its samples' rows are not {n} distinct rows in {start}..{end - 1}")
        if list(shard["keys"]) != keys[position : position + n]:
            problems.append(f"{shard['file']}: its keys are not the split's keys {position}..{position + n - 1}")
        position += n
    if position != len(keys):
        problems.append(f"split {split}: its shards hold {position} samples, the split lists {len(keys)}")


def _check_shard(out: Path, shard: Mapping[str, Any], n_fields: int, check: bool, problems: list[str]) -> int | None:
    """The shard's size on disk (None if missing), after checking it against its record."""
    path = out / shard["file"]
    if not path.is_file():
        problems.append(f"{shard['file']}: missing")
        return None
    size = path.stat().st_size
    if size != shard["bytes"]:
        problems.append(f"{shard['file']}: {size} bytes on disk, the manifest records {shard['bytes']}")
    payloads = shard.get("payloads", [])
    if len(payloads) != len(shard["keys"]):
        problems.append(f"{shard['file']}: {len(payloads)} payload records for {len(shard['keys'])} samples")
    for key, payload in zip(shard["keys"], payloads):
        ends = [int(payload[i]) + int(payload[i + 1]) for i in range(0, len(payload) - 1, 2)]
        if len(payload) != 2 * n_fields or max(ends, default=0) > size:
            problems.append(f"{shard['file']}: the payload byte ranges of {key} do not fit the schema or the file")
            break
    if check and size == shard["bytes"] and file_sha256(path) != shard["sha256"]:
        problems.append(f"{shard['file']}: sha256 differs from the manifest")
    return size


def _check_zarr_array(
    store: Path, split: str, field: str, shape: tuple[int, ...], spec: FieldSpec, problems: list[str]
) -> None:
    """The array's ``zarr.json`` exists and declares the manifest's shape and dtype."""
    path = store / split / field / "zarr.json"
    name = f"{STORE_NAME}/{split}/{field}"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{name}: no readable zarr.json ({exc.__class__.__name__})")
        return
    if tuple(meta.get("shape", ())) != shape:
        problems.append(f"{name}: shape {tuple(meta.get('shape', ()))}, the manifest says {shape}")
    try:
        same_dtype = np.dtype(meta.get("data_type")).newbyteorder("=") == spec.numpy_dtype.newbyteorder("=")
    except TypeError:
        same_dtype = False
    if not same_dtype:
        problems.append(f"{name}: data type {meta.get('data_type')!r}, the manifest says {spec.dtype}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned numbers; plain text, no box drawing."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def format_info(data: Mapping[str, Any]) -> str:
    """The plain-text view of :func:`info`'s result, as ``ssmspine info`` prints it."""
    lines = [
        f"{data['dir']}: {data['format']} v{data['format_version']}, "
        f"written by ssmspine {data['tool_version']} on {data['created']}"
    ]
    sources = ", ".join(f"{s['name']} ({human_bytes(s['bytes'])})" for s in data["sources"])
    lines.append(f"sources: {sources}; {human_bytes(data['source_bytes'])} in all")
    lines.append(
        f"samples: {data['samples']} ({_count(data['patients'], 'patient texture')}) in "
        + ", ".join(f"{name} {s['samples']}" for name, s in data["splits"].items())
    )
    if data.get("rejected"):
        lines.append(f"rejected: {_count(data['rejected'], 'member')} left out by --skip-bad (see rejected.json)")
    lines += ["", "schema (per sample):"]
    lines += _table(
        ["field", "shape", "dtype", "bytes", "encoding"],
        [
            [f, "×".join(map(str, s["shape"])), s["dtype"], human_bytes(s["sample_bytes"]), s["encoding"] or "-"]
            for f, s in data["schema"].items()
        ],
    )
    for name, split in data["splits"].items():
        shards = split["shards"]
        sizes = shards["bytes"]
        size_text = (
            ", ".join(human_bytes(b) for b in sizes)
            if len(sizes) <= 6
            else f"{human_bytes(min(sizes))} to {human_bytes(max(sizes))}, median "
            f"{human_bytes(statistics.median(sizes))}"
        )
        counts = [
            _count(split["samples"], "sample"),
            _count(split["patients"], "patient texture"),
            _count(shards["count"], "shard"),
        ]
        lines += ["", f"split {name}: {', '.join(counts)} ({size_text})"]
        if split.get("warnings") or split.get("rejected"):
            lines.append(
                f"  {_count(split['warnings'], 'sample')} with content warnings (kept as they are), "
                f"{_count(split['rejected'], 'member')} rejected"
            )
        sums = {k: sum(f[k] for f in split["fields"].values()) for k in ("decoded", "zarr", "wds")}
        rows = [
            [
                field,
                human_bytes(f["decoded"]),
                human_bytes(f["zarr"]),
                human_bytes(f["wds"]),
                _fmt_ratio(_ratio(f["zarr"], f["decoded"])),
            ]
            for field, f in [*split["fields"].items(), ("fields", sums)]
        ]
        rows.append(["on disk", "", human_bytes(split["zarr_bytes"]), human_bytes(split["wds_bytes"]), ""])
        lines += _table(["field", "decoded", "zarr", "wds tar", "zarr/decoded"], rows)
        ratio = split["ratio_to_source"]
        lines.append(
            f"  vs its share of the sources ({human_bytes(split['source_bytes'])}, apportioned by "
            f"{data['source_apportioned_by']}): zarr {_fmt_ratio(ratio['zarr'])}, "
            f"wds {_fmt_ratio(ratio['wds'])}"
        )
    ratio = data["ratio_to_source"]
    lines += [
        "",
        f"total on disk: zarr {human_bytes(data['zarr_bytes'])} ({_fmt_ratio(ratio['zarr'])} of the "
        f"sources), wds {human_bytes(data['wds_bytes'])} ({_fmt_ratio(ratio['wds'])})",
    ]
    check = data["check"]
    what = "sizes, sample lists, byte ranges, Zarr shapes" + (" and sha256" if check["checksums"] else "")
    if check["ok"]:
        hint = "" if check["checksums"] else "; --check adds sha256"
        lines.append(f"manifest: OK ({check['shards']} shards; checked {what}{hint})")
    else:
        lines.append(f"manifest: {len(check['problems'])} problem(s) (checked {what}):")
        lines += [f"  {p}" for p in check["problems"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ pictures

#: One colour per structure (labels 1–11), named, distinct from each other and from the grey
#: image; neighbours along the spine (L1, D1, L2, D2, ...) differ in hue. After Trubetskoy's
#: "20 simple, distinct colours".
LABEL_COLOURS: dict[str, tuple[str, str]] = {
    "L1": ("red", "#e6194b"),
    "L2": ("orange", "#f58231"),
    "L3": ("yellow", "#ffe119"),
    "L4": ("green", "#3cb44b"),
    "L5": ("blue", "#4363d8"),
    "S1": ("purple", "#911eb4"),
    "D1": ("cyan", "#42d4f4"),
    "D2": ("magenta", "#f032e6"),
    "D3": ("lime", "#bfef45"),
    "D4": ("pink", "#fabed4"),
    "D5": ("teal", "#469990"),
}
#: Legend text of each structure; discs also name the vertebrae they sit between.
LEGEND_NAMES: dict[str, str] = {
    **{b: b for b in BONE_NAMES},
    **{d: f"{d} ({a}/{b})" for d, a, b in zip(DISC_NAMES, BONE_NAMES, BONE_NAMES[1:])},
}
#: Fields a picture uses; ``mask`` stands in for ``label`` when an output has no label field.
PICTURE_FIELDS: tuple[str, ...] = (*IMAGE_FIELDS, "label", "bone", "disk")
OVERLAY_ALPHA = 0.45
DPI = 100
_MARGIN = 8  # px around and between panels
_TITLE = 26  # px above each panel for its title
_LEGEND_ROW = 22  # px per row of a grid's legend


def label_colours_rgb() -> np.ndarray:
    """(12, 3) float RGB in [0, 1]: row ``v`` is the colour of label value ``v`` (row 0 unused)."""
    from matplotlib.colors import to_rgb

    return np.array([(0.0, 0.0, 0.0), *(to_rgb(hex_) for _, hex_ in LABEL_COLOURS.values())])


def label_map(fields: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The label image (H, W) as int64 values 0–11, whatever the stored dtype.

    ``label`` may be (1, H, W) or (H, W), float or integer; values outside 1–11 count as
    background. Without a ``label`` field, the 11 masks (``mask``, or ``bone_mask`` and
    ``disk_mask``) are combined instead. None if the record has neither.
    """
    if "label" in fields:
        label = np.asarray(fields["label"])
        while label.ndim > 2 and label.shape[0] == 1:
            label = label[0]
        if label.ndim != 2:
            raise OutputError(f"label has shape {np.shape(fields['label'])}; expected (1, H, W) or (H, W)")
        values = np.rint(label).astype(np.int64) if label.dtype.kind == "f" else label.astype(np.int64)
        values[(values < 0) | (values >= len(LABEL_NAMES))] = 0
        return values
    masks = None
    if "mask" in fields:
        masks = np.asarray(fields["mask"])
    elif "bone_mask" in fields and "disk_mask" in fields:
        masks = np.concatenate([np.asarray(fields["bone_mask"]), np.asarray(fields["disk_mask"])])
    if masks is None:
        return None
    on = masks >= 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
    return np.where(on.any(axis=0), on.argmax(axis=0) + 1, 0).astype(np.int64)


def display_image(image: np.ndarray) -> np.ndarray:
    """A 2-D float image in [0, 1] for display: [0, 1] float data as is, anything else min–max scaled."""
    data = np.asarray(image, dtype=np.float64)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape)
    low, high = float(finite.min()), float(finite.max())
    if np.asarray(image).dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scaled = (data - low) / (high - low) if high > low else np.zeros_like(data)
    return np.clip(np.nan_to_num(scaled), 0.0, 1.0)


def overlay_rgb(image: np.ndarray, label: np.ndarray | None, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) RGB: the grey image with each labelled pixel blended towards its structure's colour."""
    grey = display_image(image)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label is not None:
        if label.shape != grey.shape:
            raise OutputError(f"label map {label.shape} and image {grey.shape} differ in size")
        on = label > 0
        rgb[on] = (1 - alpha) * rgb[on] + alpha * label_colours_rgb()[label[on]]
    return rgb


def landmark_groups(fields: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """``(structure name, (N, 2) x/y points)`` for each vertebra (``bone``) and disc (``disk``).

    Points are pixel coordinates, x the column and y the row. A landmark array that is not
    (structures, points, 2) with the documented number of structures is drawn as one group
    named after its field, so odd data still shows up rather than failing.
    """
    groups = []
    for field, names in (("bone", BONE_NAMES), ("disk", DISC_NAMES)):
        if field not in fields:
            continue
        points = np.asarray(fields[field], dtype=np.float64)
        if points.ndim == 3 and points.shape[0] == len(names) and points.shape[2] == 2:
            groups += [(name, p) for name, p in zip(names, points)]
        elif points.size % 2 == 0:
            groups.append((field, points.reshape(-1, 2)))
    return [(name, p[np.isfinite(p).all(axis=1)]) for name, p in groups]


def _base_image(fields: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The image labels and landmarks are drawn on: the corrected one, else any other."""
    for field in ("img_corrected", "img_equalized", "img"):
        if field in fields:
            return fields[field]
    return None


def _layout_panel(
    fig: Figure, column: int, row: int, panel: int, width: int, height: int, label: str, top: int = 0
) -> Axes:
    """Axes for the panel at (column, row), placed in whole pixels below ``top`` px of heading."""
    left = _MARGIN + column * (panel + _MARGIN)
    upper = top + _MARGIN + _TITLE + row * (panel + _TITLE + _MARGIN)
    return fig.add_axes((left / width, 1 - (upper + panel) / height, panel / width, panel / height), label=label)


def sample_size(panel: int = 512) -> tuple[int, int]:
    """(width, height) in pixels of :func:`sample_figure`: 3 × 2 panels of ``panel`` pixels."""
    return 3 * panel + 4 * _MARGIN, 2 * (panel + _TITLE) + 3 * _MARGIN


def grid_size(samples: int, columns: int, panel: int = 256, title: bool = True) -> tuple[int, int]:
    """(width, height) in pixels of :func:`grid_figure` for ``samples`` panels in ``columns`` columns."""
    rows = math.ceil(samples / columns)
    width = columns * panel + (columns + 1) * _MARGIN
    return width, _grid_heading(title) + rows * (panel + _TITLE + _MARGIN) + _MARGIN + _legend_height(width)


def _grid_heading(title: bool) -> int:
    return 30 if title else 0


def _legend_columns(width: int) -> int:
    return max(1, min(len(LABEL_COLOURS), (width - 2 * _MARGIN) // 110))


def _legend_height(width: int) -> int:
    return math.ceil(len(LABEL_COLOURS) / _legend_columns(width)) * _LEGEND_ROW + 2 * _MARGIN


def _new_figure(width: int, height: int) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")


def _show_image(ax: Axes, rgb_or_grey: np.ndarray, title: str, panel: int, fontsize: float) -> None:
    native = rgb_or_grey.shape[0] == panel and rgb_or_grey.shape[1] == panel
    kwargs = {} if rgb_or_grey.ndim == 3 else {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    ax.imshow(rgb_or_grey, interpolation="nearest" if native else "antialiased", **kwargs)
    ax.set_axis_off()
    ax.set_title(title, fontsize=fontsize, pad=4)


def _empty_panel(ax: Axes, title: str, fontsize: float) -> None:
    ax.set_axis_off()
    ax.set_title(title, fontsize=fontsize, pad=4)
    ax.text(0.5, 0.5, "absent", ha="center", va="center", color="0.5", transform=ax.transAxes)


def _draw_landmarks(ax: Axes, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], size: float) -> None:
    """Landmark dots in their structure's colour (no rim: 236 points per vertebra are dense enough
    that a rim would turn the contour dark), limits kept to the image."""
    for name, points in landmark_groups(fields):
        colour = LABEL_COLOURS[name][1] if name in LABEL_COLOURS else "white"
        ax.scatter(points[:, 0], points[:, 1], s=size, c=colour, linewidths=0, zorder=3)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)


def _name_structures(ax: Axes, label: np.ndarray, fontsize: float) -> None:
    """Each structure's name at its centroid, white with a dark outline, readable on any colour."""
    from matplotlib import patheffects

    for value in range(1, len(LABEL_NAMES)):
        rows, cols = np.nonzero(label == value)
        if rows.size:
            ax.text(
                cols.mean(),
                rows.mean(),
                LABEL_NAMES[value],
                color="white",
                fontsize=fontsize,
                ha="center",
                va="center",
                fontweight="bold",
                path_effects=[patheffects.withStroke(linewidth=2, foreground="black")],
            )


def _legend_handles() -> list:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=hex_, edgecolor="black", linewidth=0.5, label=LEGEND_NAMES[name])
        for name, (_, hex_) in LABEL_COLOURS.items()
    ]


def sample_figure(record: Record, *, title: Sequence[str] = (), panel: int = 512) -> Figure:
    """The figure of one sample: raw, corrected and equalized images on top; below, the label
    map over the corrected image, the landmarks on it, and the legend with the key.

    At the default ``panel=512`` every image pixel is one PNG pixel, so nothing is resampled:
    one-pixel label edges and landmark offsets stay visible. ``title`` lines go under the key.
    Fields the record lacks leave their panel marked "absent".
    """
    key, fields = record
    width, height = sample_size(panel)
    fig = _new_figure(width, height)
    fontsize = 11 if panel >= 384 else 8
    titles = {
        "img": "raw (img)",
        "img_corrected": "corrected (img_corrected)",
        "img_equalized": "equalized (img_equalized)",
    }
    for column, field in enumerate(IMAGE_FIELDS):
        ax = _layout_panel(fig, column, 0, panel, width, height, field)
        if field in fields:
            _show_image(ax, display_image(fields[field]), titles[field], panel, fontsize)
        else:
            _empty_panel(ax, titles[field], fontsize)
    base = _base_image(fields)
    label = label_map(fields)
    labels_ax = _layout_panel(fig, 0, 1, panel, width, height, "labels")
    marks_ax = _layout_panel(fig, 1, 1, panel, width, height, "landmarks")
    if base is None:
        _empty_panel(labels_ax, "labels", fontsize)
        _empty_panel(marks_ax, "landmarks", fontsize)
    else:
        grey = display_image(base)
        _show_image(
            labels_ax,
            overlay_rgb(base, label),
            "labels (label)" if label is not None else "labels: absent",
            panel,
            fontsize,
        )
        if label is not None:
            _name_structures(labels_ax, label, fontsize * 0.75)
        _show_image(marks_ax, grey, "landmarks (bone, disk)", panel, fontsize)
        _draw_landmarks(marks_ax, fields, grey.shape, size=6.0 * panel / 512)
    legend_ax = _layout_panel(fig, 2, 1, panel, width, height, "legend")
    legend_ax.set_axis_off()
    legend_ax.text(0.04, 0.97, key, fontsize=fontsize * 1.6, fontweight="bold", va="top", transform=legend_ax.transAxes)
    for i, line in enumerate(title):
        legend_ax.text(
            0.04, 0.86 - 0.065 * i, line, fontsize=fontsize, va="top", color="0.25", transform=legend_ax.transAxes
        )
    legend_ax.legend(
        handles=_legend_handles(),
        loc="upper left",
        bbox_to_anchor=(0.02, 0.62),
        ncol=2,
        fontsize=fontsize * 1.1,
        title="labels and landmarks",
        title_fontsize=fontsize * 1.1,
        alignment="left",
        frameon=False,
        handlelength=1.6,
        handleheight=1.2,
        columnspacing=1.5,
        labelspacing=0.6,
    )
    return fig


def grid_figure(
    records: Sequence[Record], *, title: str | None = None, panel: int = 256, columns: int | None = None
) -> Figure:
    """``len(records)`` samples side by side, each the corrected image with labels and landmarks,
    and one legend below: a quick look for misaligned labels or landmarks across a split."""
    if not records:
        raise ValueError("grid_figure needs at least one record")
    columns = columns or min(len(records), 6)
    width, height = grid_size(len(records), columns, panel, title is not None)
    fig = _new_figure(width, height)
    heading = _grid_heading(title is not None)
    if title is not None:
        fig.text(_MARGIN / width, 1 - (heading / 2 + _MARGIN / 2) / height, title, fontsize=12, va="center")
    fontsize = 9 if panel < 384 else 11
    for i, (key, fields) in enumerate(records):
        ax = _layout_panel(fig, i % columns, i // columns, panel, width, height, key, top=heading)
        base = _base_image(fields)
        if base is None:
            _empty_panel(ax, key, fontsize)
            continue
        _show_image(ax, overlay_rgb(base, label_map(fields)), key, panel, fontsize)
        _draw_landmarks(ax, fields, display_image(base).shape, size=max(0.5, 6.0 * panel / 512))
    legend_height = _legend_height(width)
    fig.legend(
        handles=_legend_handles(),
        loc="center",
        ncol=_legend_columns(width),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, (legend_height / 2) / height),
        handlelength=1.4,
        columnspacing=1.2,
    )
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as an RGB PNG of exactly its pixel size, atomically.

    RGB rather than matplotlib's RGBA (the background is opaque anyway) and no metadata: a
    tenth smaller, and the same sample gives the same bytes, so a committed README picture
    only changes when the picture does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buffer, format="PNG", optimize=True)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def render_sample(record: Record, path: str | os.PathLike, *, title: Sequence[str] = (), panel: int = 512) -> Path:
    """Write :func:`sample_figure` of ``record`` to ``path`` as a PNG; returns the path."""
    return save_png(sample_figure(record, title=title, panel=panel), path)


def render_grid(
    records: Sequence[Record],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    panel: int = 256,
    columns: int | None = None,
) -> Path:
    """Write :func:`grid_figure` of ``records`` to ``path`` as a PNG; returns the path."""
    return save_png(grid_figure(records, title=title, panel=panel, columns=columns), path)


# ---------------------------------------------------------------------------- reading


def _pick_split(manifest: Mapping[str, Any], split: str | None) -> str:
    splits = manifest["splits"]
    if split is None:
        return "train" if "train" in splits else next(iter(splits))
    if split not in splits:
        raise OutputError(f"no split {split!r} in this output (has {sorted(splits)})")
    return split


def _pick_indices(keys: Sequence[str], split: str, key: str | None, index: int | None, grid: int | None) -> list[int]:
    """The indices to draw: one sample, or ``grid`` of them — consecutive from ``key``/``index`` if
    given, else spread evenly over the split so that every patient texture tends to show up."""
    if key is not None and index is not None:
        raise ValueError("give key or index, not both")
    n = len(keys)
    if n == 0:
        raise OutputError(f"split {split!r} has no samples")
    if key is not None:
        if key not in keys:
            raise OutputError(f"split {split!r} has no sample {key!r} (keys look like {keys[0]!r})")
        start = list(keys).index(key)
    elif index is not None:
        if not -n <= index < n:
            raise OutputError(f"sample index {index} is out of range for split {split!r} of {n} samples")
        start = index % n
    else:
        start = None
    if grid is None:
        return [start or 0]
    if grid < 1:
        raise ValueError(f"grid must be at least 1, not {grid}")
    if start is not None:
        return list(range(start, min(start + grid, n)))
    return sorted(set(np.linspace(0, n - 1, min(grid, n)).round().astype(int).tolist()))


def _picture_fields(schema: Mapping[str, Any]) -> list[str]:
    fields = [f for f in PICTURE_FIELDS if f in schema]
    if "label" not in schema:
        fields += [f for f in ("mask", "bone_mask", "disk_mask") if f in schema]
    return fields


def read_wds_records(
    out: str | os.PathLike, split: str, indices: Sequence[int], fields: Sequence[str] | None = None
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Records of samples ``indices`` (positions in the split's key list) of ``split``, read from
    the tar shards, fetching only ``fields``.

    Uses the payload byte ranges in the manifest: one ``pread`` per field, and a check that
    the tar header in front of it names that sample's member, so a stale manifest cannot
    silently show another sample.
    """
    out = Path(out)
    manifest = read_manifest(out)
    split = _pick_split(manifest, split)
    entry = manifest["splits"][split]
    order = list(manifest["schema"])
    fields = order if fields is None else list(fields)
    missing = [f for f in fields if f not in order]
    if missing:
        raise OutputError(f"no field(s) {missing} in this output (has {order})")
    shards = sorted(entry["shards"], key=lambda s: s["index"])
    firsts = np.cumsum([0] + [len(s["keys"]) for s in shards])  # position of each shard's first sample
    records = []
    for position in indices:
        i = int(np.searchsorted(firsts, position, side="right")) - 1
        if not 0 <= position < firsts[-1]:
            raise OutputError(f"sample index {position} is out of range for split {split!r} of {firsts[-1]} samples")
        shard, within = shards[i], position - int(firsts[i])
        key, payload = shard["keys"][within], shard["payloads"][within]
        arrays = {}
        with open(out / shard["file"], "rb") as file:
            for field in fields:
                j = order.index(field)
                offset, size = int(payload[2 * j]), int(payload[2 * j + 1])
                name = member_name(key, field)
                if _tar_member_name(os.pread(file.fileno(), 512, offset - 512)) != name:
                    raise OutputError(
                        f"{shard['file']}: no member {name} at byte {offset - 512}; the manifest "
                        "does not match the shard"
                    )
                data = os.pread(file.fileno(), size, offset)
                if len(data) != size:
                    raise OutputError(f"{shard['file']}: {name} is cut short ({len(data)} of {size} bytes)")
                arrays[field] = decode_field(data, f"{shard['file']}: {name}")
        records.append((key, arrays))
    return records


def _tar_member_name(header: bytes) -> str:
    """The member name a USTAR header block holds (prefix and name fields joined)."""
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    return f"{prefix}/{name}" if prefix else name


def read_zarr_records(
    out: str | os.PathLike, split: str, indices: Sequence[int], fields: Sequence[str] | None = None
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Records of ``indices`` of ``split`` read through :class:`~pipeline.read.zarr_dataset.ZarrDataset`."""
    from pipeline.read.zarr_dataset import ZarrDataset

    dataset = ZarrDataset(out, split, fields)
    try:
        return [dataset.read_record(i) for i in indices]
    finally:
        dataset.close()


def show(
    out: str | os.PathLike,
    split: str | None = None,
    key: str | None = None,
    index: int | None = None,
    *,
    from_wds: bool = False,
    grid: int | None = None,
    path: str | os.PathLike = "sample.png",
) -> Path:
    """Draw one sample (or ``grid`` samples) of ``split`` to a PNG at ``path``; returns the path.

    Reads through the Zarr store by default, or from the tar shards with ``from_wds`` — the two
    pictures of a sample are identical, which makes this a visual check of either format.
    ``split`` defaults to ``train`` (or the first split); the sample to ``index`` 0.
    """
    out = Path(out)
    manifest = read_manifest(out)
    split = _pick_split(manifest, split)
    keys = manifest["splits"][split]["keys"]
    indices = _pick_indices(keys, split, key, index, grid)
    fields = _picture_fields(manifest["schema"])
    reader = read_wds_records if from_wds else read_zarr_records
    records = reader(out, split, indices, fields)
    source = "WebDataset tar shards" if from_wds else "the Zarr store"
    log.info("drawing %d sample(s) of %s from %s", len(records), split, source)
    if grid is not None:
        title = f"{out}: split {split}, {len(records)} of {len(keys)} samples, read from {source}"
        return render_grid(records, path, title=title)
    entry = manifest["splits"][split]
    first = indices[0]
    lines = [f"split {split}, sample {first} of {len(keys)}"]
    if "patient" in entry and "aug" in entry:
        lines.append(f"patient texture {entry['patient'][first]}, virtual shape {entry['aug'][first]}")
    return render_sample(records[0], path, title=[*lines, f"read from {source}"])
