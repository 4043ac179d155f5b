"""The ``ssmspine`` command's arguments: every subcommand, its options, and the parsers of sizes and patient lists."""

from __future__ import annotations

import argparse
import re

from pipeline.cli.passwords import add_password_option
from pipeline.cli.storage_options import add_storage_options_option
from pipeline.source.passwords import PASSWORD_VARIABLE
from pipeline.source.zip_crypto import ENCRYPTIONS
from pipeline.store.codecs import PREFERENCES
from pipeline.version import __version__

DESCRIPTION = "Convert the SSMSpine archives into Zarr and WebDataset shards, check and look at them."

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    _UNITS.update({_prefix: 1000**_power, f"{_prefix}b": 1000**_power, f"{_prefix}ib": 1024**_power})


def parse_size(text: str) -> int:
    """``"256MB"`` → 256_000_000, ``"1GiB"`` → 2**30; bare numbers are bytes."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256MB or 1GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_patients(text: str) -> tuple[int, ...]:
    """``"3,7,12"`` → (3, 7, 12)."""
    try:
        return tuple(sorted({int(p.strip().lstrip("p")) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of patient numbers: {text!r}") from None


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="local Dask worker processes (default: one per core)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmspine", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic archive in the SSMSpine release format")
    synth.add_argument("out", help="zip file to write (or a directory with --tree)")
    synth.add_argument("--patients", type=int, default=1)
    synth.add_argument("--shapes", type=int, default=8)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--first-patient", type=int, default=1)
    synth.add_argument("--root", default="Train", help="member root, may be nested (SSMSpine_Train/Train)")
    synth.add_argument("--values", choices=("numpy", "tensor"), default="numpy")
    synth.add_argument("--image-dtype", default="float32")
    synth.add_argument("--mask-dtype", default="uint8")
    synth.add_argument("--label-dtype", default="int64")
    synth.add_argument("--landmark-dtype", default="float64")
    synth.add_argument("--compression", choices=("deflate", "stored"), default="deflate")
    synth.add_argument(
        "--numpy-pickle",
        type=int,
        choices=(1, 2),
        default=1,
        help="name numpy globals as numpy 1.x (as the 2024 release does) or 2.x",
    )
    synth.add_argument(
        "--serialization",
        choices=("zip", "legacy"),
        default="zip",
        help="torch's zip format (default since torch 1.6) or its legacy format",
    )
    synth.add_argument("--junk", action="store_true", help="add __MACOSX/ and .DS_Store entries")
    synth.add_argument("--tree", action="store_true", help="write an extracted directory instead of a zip")
    synth.add_argument(
        "--encrypt",
        choices=ENCRYPTIONS,
        default="none",
        help="encrypt every member (AES: AES-256) with the password of --password-file or $" + PASSWORD_VARIABLE,
    )
    add_password_option(synth)

    convert = commands.add_parser("convert", help="convert archives into Zarr + WebDataset shards")
    convert.add_argument("sources", nargs="+", help="SSMSpine zip archives or extracted directories")
    convert.add_argument("--out", required=True, help="output directory")
    convert.add_argument(
        "--shard-size", type=parse_size, default=parse_size("256MB"), help="target tar shard size, e.g. 256MB (default)"
    )
    convert.add_argument("--split", help="split name for all sources (default: from the archive root)")
    convert.add_argument(
        "--val-patients",
        type=parse_patients,
        default=(),
        help="train patient numbers to move into a 'val' split, e.g. 3,7,12",
    )
    skip = "convert everything else and list bad members in DIR/rejected.json"
    convert.add_argument("--skip-bad", action="store_true", help=skip)
    keep = "store every field in its source dtype, not label and masks in the narrowest lossless one"
    convert.add_argument("--keep-dtypes", action="store_true", help=keep)
    prefer = "what the codec choice favours: smallest shards (default) or fastest decoding (in ~2x the bytes)"
    convert.add_argument("--prefer", choices=PREFERENCES, default="size", help=prefer)
    convert.add_argument(
        "--force", action="store_true", help="replace an output directory that holds a conversion of other sources"
    )
    add_password_option(convert)
    add_storage_options_option(convert)
    _add_cluster_options(convert)

    verify = commands.add_parser("verify", help="compare an output bit for bit with its sources")
    verify.add_argument("sources", nargs="*", help="the sources (default: check against the manifest)")
    verify.add_argument("--out", required=True, help="output directory")
    add_password_option(verify)
    add_storage_options_option(verify)
    _add_cluster_options(verify)

    scan = commands.add_parser("scan", help="what sources hold, before converting: samples, methods, encryption")
    scan.add_argument("sources", nargs="+", help="SSMSpine zip archives (paths or URLs) or extracted directories")
    scan.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    add_password_option(scan)
    add_storage_options_option(scan)

    info = commands.add_parser("info", help="what an output holds: counts, schema, bytes, shards, manifest check")
    info.add_argument("out", help="output directory (holds manifest.json)")
    info.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    info.add_argument("--check", action="store_true", help="also check every tar shard's sha256 (reads every byte)")
    add_storage_options_option(info)

    show = commands.add_parser("show", help="draw a sample's images, labels and landmarks to a PNG")
    show.add_argument("out", help="output directory (holds manifest.json)")
    show.add_argument("--split", help="split to draw from (default: train, else the first split)")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--key", help="sample key, e.g. p01_aug003")
    which.add_argument("--index", type=int, help="sample row in the split (default 0; negative counts from the end)")
    show.add_argument("-o", "--output", default="sample.png", help="PNG to write (default sample.png)")
    show.add_argument("--from-wds", action="store_true", help="read the sample from the tar shards, not from Zarr")
    show.add_argument(
        "--grid",
        type=_positive_int,
        metavar="N",
        help="draw N samples side by side (from --key/--index on, else spread over the split)",
    )
    add_storage_options_option(show)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value
