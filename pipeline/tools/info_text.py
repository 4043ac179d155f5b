"""The plain-text view of :func:`pipeline.tools.info.info`'s result, as ``ssmspine info`` prints it.

Kept apart from :mod:`pipeline.tools.info` so that the library returns data (JSON-able, for
``--json`` and scripts) and the text is one function of that data; only the CLI prints it.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping

from pipeline.sizes import human_bytes
from pipeline.tools.tables import plain_table, plural, ratio, ratio_text


def format_info(data: Mapping[str, Any], check: Mapping[str, Any]) -> str:
    """The text ``ssmspine info`` prints for :func:`~pipeline.tools.info.info`'s result and the
    manifest check (:class:`pipeline.verify.consistency.ManifestCheck` as JSON-able data)."""
    lines = [
        f"{data['dir']}: {data['format']} v{data['format_version']}, "
        f"written by ssmspine {data['tool_version']} on {data['created']}"
    ]
    sources = ", ".join(f"{s['name']} ({human_bytes(s['bytes'])})" for s in data["sources"])
    lines.append(f"sources: {sources}; {human_bytes(data['source_bytes'])} in all")
    lines.append(
        f"samples: {data['samples']} ({plural(data['patients'], 'patient texture')}) in "
        + ", ".join(f"{name} {s['samples']}" for name, s in data["splits"].items())
    )
    if data.get("rejected"):
        lines.append(f"rejected: {plural(data['rejected'], 'member')} left out by --skip-bad (see rejected.json)")
    lines += ["", "schema (per sample):"]
    lines += plain_table(
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
            plural(split["samples"], "sample"),
            plural(split["patients"], "patient texture"),
            plural(shards["count"], "shard"),
        ]
        lines += ["", f"split {name}: {', '.join(counts)} ({size_text})"]
        if split.get("warnings") or split.get("rejected"):
            lines.append(
                f"  {plural(split['warnings'], 'sample')} with content warnings (kept as they are), "
                f"{plural(split['rejected'], 'member')} rejected"
            )
        sums = {k: sum(f[k] for f in split["fields"].values()) for k in ("decoded", "zarr", "wds")}
        rows = [
            [
                field,
                human_bytes(f["decoded"]),
                human_bytes(f["zarr"]),
                human_bytes(f["wds"]),
                ratio_text(ratio(f["zarr"], f["decoded"])),
            ]
            for field, f in [*split["fields"].items(), ("fields", sums)]
        ]
        rows.append(["on disk", "", human_bytes(split["zarr_bytes"]), human_bytes(split["wds_bytes"]), ""])
        lines += plain_table(["field", "decoded", "zarr", "wds tar", "zarr/decoded"], rows)
        to_source = split["ratio_to_source"]
        lines.append(
            f"  vs its share of the sources ({human_bytes(split['source_bytes'])}, apportioned by "
            f"{data['source_apportioned_by']}): zarr {ratio_text(to_source['zarr'])}, "
            f"wds {ratio_text(to_source['wds'])}"
        )
    to_source = data["ratio_to_source"]
    lines += [
        "",
        f"total on disk: zarr {human_bytes(data['zarr_bytes'])} ({ratio_text(to_source['zarr'])} of the "
        f"sources), wds {human_bytes(data['wds_bytes'])} ({ratio_text(to_source['wds'])})",
    ]
    what = "sizes, sample lists, byte ranges, Zarr shapes" + (" and sha256" if check["checksums"] else "")
    if check["ok"]:
        hint = "" if check["checksums"] else "; --check adds sha256"
        lines.append(f"manifest: OK ({check['shards']} shards; checked {what}{hint})")
    else:
        lines.append(f"manifest: {len(check['problems'])} problem(s) (checked {what}):")
        lines += [f"  {p}" for p in check["problems"]]
    return "\n".join(lines)
