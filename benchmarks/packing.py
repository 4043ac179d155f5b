"""``make bench-convert``, the packed rows: one synthetic tree packed four ways, each archive converted in turn.

Why: encrypted and Deflate64 sources go through other code than plain deflate (ZipCrypto through
fast-zip-decryption's C decrypter, WinZip AES through ``cryptography``: AES-CTR and an HMAC-SHA1
of the ciphertext, Deflate64 through ``inflate64`` rather than zlib-ng), and issue 17 sets how
much of the plain rate each may cost. So the same samples (one tree from the synthetic generator)
are packed by the tools that make such archives in the wild: Info-ZIP ``zip`` (plain deflate, the
baseline, and ``-P``: ZipCrypto over deflate) and 7-Zip (``-mem=AES256``: WinZip AES-256 over
7-Zip's own deflate; ``-mm=Deflate64``, not encrypted). Every sample member of each archive is
checked to be what its row claims before anything is timed.

Measured: conversion throughput, :attr:`~pipeline.convert.Summary.samples_per_second` (the tasks
alone: no planning, no cluster start-up), on one local cluster that every conversion shares, with
the encodings fixed to those the first, untimed, conversion of the baseline chose (they are
chosen by timing, and no row should pay for a different codec). Each round converts every
archive, in an order rotated from round to round; a ratio is the median of the rounds' ratios to
the baseline, taken within a round so that drifting machine load cancels.

The password is a made-up constant of this benchmark, given to the tools on their command line
and to the conversion; it is written to no output.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from pipeline.source.members import is_junk
from pipeline.source.zip_crypto import AES_METHOD, aes_parameters
from pipeline.source.zip_local import MASK_ENCRYPTED
from pipeline.source.zip_methods import method_name

from benchmarks.common import OtherLoad, made_once, markdown_table

#: Made up for this benchmark, not a secret; still never printed or saved.
PASSWORD = b"ssmspine-bench-17"
#: Each packed archive's name: the release's, so the conversion sees what it would see there.
ARCHIVE_NAME = "SSMSpine_Train.zip"
#: Rounds at least: the machine is shared, and a median of three moves with one busy moment.
MIN_ROUNDS = 5
#: Executables tried for each tool, and how to get it where none is found.
TOOLS = {
    "zip": (("zip",), "Info-ZIP `zip` (apt install zip)"),
    "7z": (("7z", "7zz", "7za"), "7-Zip `7z` (apt install 7zip)"),
}


@dataclass(frozen=True)
class Packing:
    """One way to pack the tree: the tool and its options, what its sample members must then be,
    and the least ratio to the baseline issue 17 accepts (None: the baseline itself)."""

    key: str
    label: str
    tool: str
    options: tuple[str, ...]
    encrypted: bool
    member: str
    target: float | None


PACKINGS = (
    Packing("deflate", "deflate (`zip -r`)", "zip", (), False, "deflate", None),
    Packing("zipcrypto", "ZipCrypto, deflate (`zip -r -P`)", "zip", (), True, "ZipCrypto deflate", 0.8),
    Packing("aes", "WinZip AES-256, deflate (`7z -mem=AES256`)", "7z", ("-mem=AES256",), True, "AES-256 deflate", 0.9),
    Packing("deflate64", "Deflate64 (`7z -mm=Deflate64`)", "7z", ("-mm=Deflate64",), False, "Deflate64", 0.8),
)
BASELINE = PACKINGS[0].key


class PackingUnavailable(Exception):
    """The packed rows cannot be measured here; the text is the one line that says why."""


def find_tools(which: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """Each tool's executable (as ``which``, by default :func:`shutil.which`, finds it), or
    :class:`PackingUnavailable` naming every one missing."""
    which = which or shutil.which
    found = {tool: next((path for name in names if (path := which(name))), None) for tool, (names, _) in TOOLS.items()}
    missing = [TOOLS[tool][1] for tool, path in found.items() if path is None]
    if missing:
        raise PackingUnavailable(f"packed-source rows skipped: {' and '.join(missing)} not found on PATH")
    return found


def member_kind(info: zipfile.ZipInfo) -> str:
    """How a member is stored: ``"deflate"``, ``"ZipCrypto deflate"``, ``"AES-256 deflate"``, ``"Deflate64"``..."""
    if info.compress_type == AES_METHOD:
        aes = aes_parameters(info.extra)
        return "AES without its 0x9901 field" if aes is None else f"AES-{aes.key_bytes * 8} {method_name(aes.method)}"
    name = method_name(info.compress_type)
    return f"ZipCrypto {name}" if info.flag_bits & MASK_ENCRYPTED else name


def archive_kinds(archive: Path) -> set[str]:
    """How the sample members of ``archive`` are stored (directories and junk left out)."""
    with zipfile.ZipFile(archive) as z:
        return {member_kind(i) for i in z.infolist() if not i.is_dir() and not is_junk(i.filename)}


def command(packing: Packing, executable: str, archive: Path, root: str, password: bytes = PASSWORD) -> list[str]:
    """The tool's command line that packs the folder ``root`` (relative to where it runs) into ``archive``."""
    secret = password.decode()
    if packing.tool == "zip":
        return [
            executable,
            "-r",
            "-q",
            "-X",
            *packing.options,
            *(("-P", secret) * packing.encrypted),
            str(archive),
            root,
        ]
    return [executable, "a", "-tzip", *packing.options, *((f"-p{secret}",) * packing.encrypted), str(archive), root]


def pack(tree: Path, root: str, archive: Path, packing: Packing, tools: Mapping[str, str]) -> Path:
    """``tree/root`` packed into a new ``archive``, its sample members checked to be ``packing.member``.

    A tool that fails, or packs otherwise, is :class:`PackingUnavailable`, in one line that shows
    the tool's last words but never its command line (which holds the password).
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.unlink(missing_ok=True)
    argv = command(packing, tools[packing.tool], archive.resolve(), root)
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode:
        last = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])
        raise PackingUnavailable(
            f"packed-source rows skipped: `{packing.tool}` failed ({done.returncode}) packing {packing.key}: {last}"
        )
    kinds = archive_kinds(archive)
    if kinds != {packing.member}:
        raise PackingUnavailable(
            f"packed-source rows skipped: `{packing.tool}` packed {packing.key} "
            f"as {sorted(kinds)}, not {packing.member!r}"
        )
    return archive


def schedule(keys: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, key): every key once a round, the order rotated by one each round, so none always goes first."""
    for r in range(rounds):
        shift = r % len(keys)
        for key in [*keys[shift:], *keys[:shift]]:
            yield r, key


def measure(
    archives: Mapping[str, Path], out: Path, rounds: int, workers: int = 2, scheduler: str | None = None
) -> dict[str, list[float]]:
    """Samples/s converting each archive, per round, on one cluster (``scheduler``'s, or a new local one)."""
    from distributed import Client

    from pipeline.cluster import local_cluster
    from pipeline.convert import ConvertOptions, convert
    from pipeline.source.passwords import Passwords
    from pipeline.store.codecs import Encoding

    def converted(archive: Path, options: ConvertOptions):
        shutil.rmtree(out, ignore_errors=True)
        return convert([archive], out, options)

    def rates(address: str) -> dict[str, list[float]]:
        common = {"scheduler": address, "progress": False, "passwords": Passwords.for_all(PASSWORD)}
        converted(archives[BASELINE], ConvertOptions(**common))  # untimed: warms the workers, chooses encodings
        chosen = json.loads((out / "manifest.json").read_text())["encodings"]
        options = ConvertOptions(**common, encodings={f: Encoding.from_json(e) for f, e in chosen.items()})
        per_round: dict[str, list[float]] = {key: [] for key in archives}
        for _, key in schedule(list(archives), rounds):
            per_round[key].append(converted(archives[key], options).samples_per_second)
        return per_round

    if scheduler:
        return rates(scheduler)
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        return rates(cluster.scheduler_address)


def packed_archives(scratch: Path, samples: int, tools: Mapping[str, str]) -> dict[str, Path]:
    """The tree of ``samples`` synthetic samples (2 patients) packed each way, each made once per
    ``scratch`` (a ``.complete`` marker each); :class:`PackingUnavailable` where a tool fails."""
    from pipeline.tools.synth import SynthConfig, write_tree

    config = SynthConfig(patients=2, shapes=max(1, samples // 2))
    tree = made_once(scratch / f"packed-tree-{samples}", lambda d: write_tree(d, config))
    archives = {}
    for p in PACKINGS:
        folder = scratch / f"packed-{p.key}-{samples}"
        made_once(folder, lambda d, p=p: pack(tree, config.root, d / ARCHIVE_NAME, p, tools))
        archives[p.key] = folder / ARCHIVE_NAME
    return archives


def run(scratch: Path, samples: int, rounds: int = MIN_ROUNDS, workers: int = 2, scheduler: str | None = None) -> dict:
    """The packed rows' figures, for ``bench/convert.json``: ``{"skipped": line}`` where they cannot be measured."""
    try:
        archives = packed_archives(scratch, samples, find_tools())
    except PackingUnavailable as exc:
        return {"skipped": str(exc)}
    load = OtherLoad()
    rates = measure(archives, scratch / "out-packed", rounds, workers, scheduler)
    return {
        "samples": 2 * max(1, samples // 2),
        "workers": workers,
        "rounds": rounds,
        "archive_bytes": {key: path.stat().st_size for key, path in archives.items()},
        "samples_per_s": rates,
        "other_load_cores": load.cores,
    }


PACKED_HEADER = ["source zip (same samples)", "MB", "samples/s converting", "vs deflate", "target"]


def packed_rows(packed: Mapping[str, Any]) -> list[list[str]]:
    """Per packing: MB, median samples/s (slowest–fastest round), the median of the per-round ratios, the target."""
    rates, sizes = packed["samples_per_s"], packed.get("archive_bytes", {})
    rows = []
    for p in PACKINGS:
        mine = rates.get(p.key)
        if not mine:
            continue
        ratio = statistics.median(m / b for m, b in zip(mine, rates[BASELINE]))
        met = "" if p.target is None else f"≥ {p.target} ({'met' if ratio >= p.target else 'NOT met'})"
        size = f"{sizes[p.key] / 1e6:.1f}" if p.key in sizes else "-"
        rate = f"{statistics.median(mine):.1f} ({min(mine):.1f}–{max(mine):.1f})"
        rows.append([p.label, size, rate, f"{ratio:.3f}×", met])  # 3 decimals: a target missed by 0.005 shows
    return rows


def packed_lines(packed: Mapping[str, Any]) -> list[str]:
    """What the benchmark prints and the report shows: the table, or the line saying why there is none."""
    if "skipped" in packed:
        return [packed["skipped"]]
    load = packed.get("other_load_cores")
    busy = "" if load is None else f"; other processes kept {load:.2f} cores busy meanwhile"
    return [
        f"The same {packed['samples']} samples packed four ways, each converted with {packed['workers']} workers "
        f"on one cluster, {packed['rounds']} rounds in rotated order{busy}. Samples/s of the tasks alone (no "
        "planning or start-up), median (slowest–fastest); a ratio is the median of the rounds' ratios to deflate:",
        "",
        markdown_table(PACKED_HEADER, packed_rows(packed)),
    ]
