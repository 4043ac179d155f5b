"""The ``ssmspine`` command: parse arguments, call the library, print, and pick an exit code.

Exit codes: 0 success; 1 ``verify`` found differences; 2 bad input or output (the message names
the archive, member, shard or field); 3 an internal error (a bug; ``-v`` shows its traceback);
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from typing import TYPE_CHECKING, Sequence

from pipeline.errors import SSMSpineError, UsageError
from pipeline.sizes import human_bytes
from pipeline.source.passwords import PASSWORD_VARIABLE
from pipeline.store.codecs import PREFERENCES
from pipeline.urls import safe_url
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.source.passwords import Passwords

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


def _add_password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="passwords of encrypted archives: one line for all, or lines 'NAME.zip: PASSWORD' "
        f"(else ${PASSWORD_VARIABLE}, else asked in a terminal; never a command-line value)",
    )


def _passwords(args: argparse.Namespace, sources: Sequence[str]) -> "Passwords":
    """The passwords of the run: from ``--password-file``, else the environment; then, for encrypted
    sources still without one, asked without echo when standard input is a terminal.

    Without a terminal nothing is asked: the library names the archive and the ways to give one.
    """
    from pipeline.source.passwords import Password, Passwords, passwords_from_environment, read_password_file
    from pipeline.source.unlock import locked_sources

    given = read_password_file(args.password_file) if args.password_file else passwords_from_environment()
    if not sys.stdin.isatty():
        return given
    locked = locked_sources(list(sources), given)
    if not locked:
        return given
    import getpass

    from pipeline.urls import location_name

    asked = {location_name(s): Password(getpass.getpass(f"password of {location_name(s)}: ")) for s in locked}
    return given.merged_with(Passwords(by_name=asked))


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="local Dask worker processes (default: one per core)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmspine", description=__doc__.splitlines()[0])
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
        choices=("none", "zipcrypto", "aes"),
        default="none",
        help="encrypt every member (AES: AES-256) with the password of --password-file or $" + PASSWORD_VARIABLE,
    )
    _add_password_option(synth)

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
    _add_password_option(convert)
    _add_cluster_options(convert)

    verify = commands.add_parser("verify", help="compare an output bit for bit with its sources")
    verify.add_argument("sources", nargs="*", help="the sources (default: check against the manifest)")
    verify.add_argument("--out", required=True, help="output directory")
    _add_password_option(verify)
    _add_cluster_options(verify)

    scan = commands.add_parser("scan", help="what sources hold, before converting: samples, methods, encryption")
    scan.add_argument("sources", nargs="+", help="SSMSpine zip archives (paths or URLs) or extracted directories")
    scan.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    _add_password_option(scan)

    info = commands.add_parser("info", help="what an output holds: counts, schema, bytes, shards, manifest check")
    info.add_argument("out", help="output directory (holds manifest.json)")
    info.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    info.add_argument("--check", action="store_true", help="also check every tar shard's sha256 (reads every byte)")

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
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _synth(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.tools.synth import SynthConfig, write_archive, write_tree

    # every field of SynthConfig has its option, of the same name
    config = SynthConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)})
    if args.tree:
        path = write_tree(args.out, config)
    else:
        password = _passwords(args, ()).for_archive(args.out) if config.encrypt != "none" else None
        if config.encrypt != "none" and password is None:
            raise UsageError(
                f"--encrypt {config.encrypt} needs a password: --password-file FILE or ${PASSWORD_VARIABLE}"
            )
        path = write_archive(args.out, config, password)
    print(f"wrote {path}: {args.patients * args.shapes} samples")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pipeline.convert import ConvertOptions, convert

    options = ConvertOptions(
        shard_bytes=args.shard_size,
        workers=args.workers,
        scheduler=args.scheduler,
        split=args.split,
        val_patients=args.val_patients,
        progress=not args.no_progress,
        skip_bad=args.skip_bad,
        keep_dtypes=args.keep_dtypes,
        prefer=args.prefer,
        force=args.force,
        passwords=_passwords(args, args.sources),
    )
    summary = convert(args.sources, args.out, options)
    _print_problems(summary)
    if summary.up_to_date:
        print(f"{safe_url(args.out)} is up to date: {summary.samples} samples, nothing to do")
        return 0
    splits = ", ".join(f"{split} {n}" for split, n in summary.splits.items())
    print(f"converted {summary.samples} samples ({splits}) into {safe_url(args.out)}")
    print(f"  shards: {summary.shards_written} written, {summary.shards_kept} kept from an earlier run")
    print(f"  bytes in: {human_bytes(summary.source_bytes)} (sources)")
    for name, nbytes in (("zarr", summary.zarr_bytes), ("wds", summary.wds_bytes)):
        ratio = nbytes / summary.source_bytes if summary.source_bytes else 0
        print(f"  bytes out, {name}: {human_bytes(nbytes)} ({ratio:.3f} of the sources)")
    print(
        f"  time: {summary.seconds:.1f} s ({summary.planning_seconds:.1f} s planning, "
        f"{summary.startup_seconds:.1f} s cluster start-up), {summary.samples_per_second:.1f} samples/s converting"
    )
    return 0


def _print_problems(summary) -> None:
    """Rejected members (``--skip-bad``) and content warnings, a line each, the first 20 of each."""
    for title, lines in (
        (
            f"rejected {len(summary.rejected)} member(s), listed in rejected.json:",
            [f"  {r.archive}: {r.member}: {r.reason}" for r in summary.rejected],
        ),
        (
            f"{len(summary.warnings)} sample(s) with content warnings (kept as they are, listed in the manifest):",
            [f"  {key}: {'; '.join(found)}" for key, found in summary.warnings.items()],
        ),
    ):
        if lines:
            print(title)
            print("\n".join(lines[:20] + ([f"  ... and {len(lines) - 20} more"] if len(lines) > 20 else [])))


def _verify(args: argparse.Namespace) -> int:
    from pipeline.verify import verify

    report = verify(
        args.out,
        args.sources or None,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=not args.no_progress,
        passwords=_passwords(args, args.sources),
    )
    for problem in report.problems[:50]:
        print(problem)
    if len(report.problems) > 50:
        print(f"... and {len(report.problems) - 50} more")
    verdict = "OK" if report.ok else f"FAILED: {len(report.problems)} differences"
    print(
        f"verify against {report.against}: {report.samples} samples in {report.shards} shards, both formats: {verdict}"
    )
    print(
        f"  time: {report.seconds:.1f} s ({report.startup_seconds:.1f} s cluster start-up), "
        f"{report.samples_per_second:.1f} samples/s checking"
    )
    return 0 if report.ok else 1


def _info(args: argparse.Namespace) -> int:
    import json

    from pipeline.storage import Storage
    from pipeline.store.manifest import read_manifest
    from pipeline.tools.info import info
    from pipeline.tools.info_text import format_info
    from pipeline.verify.consistency import check_output

    out = Storage(args.out)
    manifest = read_manifest(out)  # once, for both: a release's manifest is megabytes, maybe remote
    data = info(out, manifest=manifest)
    found = check_output(out, checksums=args.check, manifest=manifest)
    check = found.to_json()
    print(json.dumps({**data, "check": check}, indent=1) if args.json else format_info(data, check))
    return 0 if found.ok else 1


def _scan(args: argparse.Namespace) -> int:
    import json

    from pipeline.tools.scan import format_scan, scan

    report = scan(args.sources, _passwords(args, args.sources))
    print(json.dumps(report.to_json(), indent=1) if args.json else format_scan(report))
    return 0 if report.ok else 2


def _show(args: argparse.Namespace) -> int:
    from pipeline.tools.show import show

    path = show(
        args.out, args.split, key=args.key, index=args.index, from_wds=args.from_wds, grid=args.grid, path=args.output
    )
    print(f"wrote {path}")
    return 0


COMMANDS = {
    "synth": _synth,
    "convert": _convert,
    "verify": _verify,
    "scan": _scan,
    "info": _info,
    "show": _show,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose and args.command in ("convert", "verify"):  # Dask narrates cluster start and stop at INFO
        import distributed  # noqa: F401  (its import configures the logger we quieten here)

        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except SSMSpineError as exc:
        print(f"ssmspine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, missing permissions: not a bug, so no traceback
        print(f"ssmspine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssmspine {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.verbose:
            traceback.print_exc()
        print(
            f"ssmspine {args.command}: internal error: {type(exc).__name__}: {exc} (a bug; "
            f"{'please report it' if args.verbose else 'run again with -v for the traceback'})",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
