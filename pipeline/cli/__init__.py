"""The ``ssmspine`` command: parse arguments, call the library, print, and pick an exit code.

Exit codes: 0 success; 1 ``verify`` found differences; 2 bad input or output (the message names
the archive, member, shard or field); 3 an internal error (a bug; ``-v`` shows its traceback);
130 interrupted.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Sequence

from pipeline.cli.commands import COMMANDS
from pipeline.cli.parser import build_parser, parse_patients, parse_size
from pipeline.errors import SSMSpineError

__all__ = ["build_parser", "main", "parse_patients", "parse_size"]


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
