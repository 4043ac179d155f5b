"""The ``ssmspine`` subcommands: each calls the library, prints its result, and returns an exit code."""

from __future__ import annotations

import argparse

from pipeline.cli.passwords import run_passwords
from pipeline.cli.storage_options import run_storage_options
from pipeline.errors import UsageError
from pipeline.sizes import human_bytes
from pipeline.source.passwords import PASSWORD_VARIABLE
from pipeline.urls import safe_url


def _synth(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.tools.synth import SynthConfig, write_archive, write_tree

    # every field of SynthConfig has its option, of the same name
    config = SynthConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)})
    if args.tree:
        path = write_tree(args.out, config)
    else:
        password = run_passwords(args, ()).for_archive(args.out) if config.encrypt != "none" else None
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
        passwords=run_passwords(args, args.sources, storage_options := run_storage_options(args)),
        storage_options=storage_options,
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
        passwords=run_passwords(args, args.sources, storage_options := run_storage_options(args)),
        storage_options=storage_options,
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

    out = Storage(args.out, run_storage_options(args))
    manifest = read_manifest(out)  # once, for both: a release's manifest is megabytes, maybe remote
    data = info(out, manifest=manifest)
    found = check_output(out, checksums=args.check, manifest=manifest)
    check = found.to_json()
    print(json.dumps({**data, "check": check}, indent=1) if args.json else format_info(data, check))
    return 0 if found.ok else 1


def _scan(args: argparse.Namespace) -> int:
    import json

    from pipeline.tools.scan import format_scan, scan

    storage_options = run_storage_options(args)
    report = scan(args.sources, run_passwords(args, args.sources, storage_options), storage_options)
    print(json.dumps(report.to_json(), indent=1) if args.json else format_scan(report))
    return 0 if report.ok else 2


def _show(args: argparse.Namespace) -> int:
    from pipeline.tools.show import show

    path = show(
        args.out,
        args.split,
        key=args.key,
        index=args.index,
        from_wds=args.from_wds,
        grid=args.grid,
        path=args.output,
        storage_options=run_storage_options(args),
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
