"""Where the passwords of a command come from: ``--password-file``, else ``SSMSPINE_ZIP_PASSWORD``, else a
prompt without echo in a terminal. Never a command-line value: ``ps`` and shell history would show it."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

from pipeline.source.passwords import PASSWORD_VARIABLE, Passwords


def add_password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="passwords of encrypted archives: one line for all, or lines 'NAME.zip: PASSWORD' "
        f"(else ${PASSWORD_VARIABLE}, else asked in a terminal; never a command-line value)",
    )


def run_passwords(
    args: argparse.Namespace, sources: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> Passwords:
    """The passwords of the run: from ``--password-file``, else the environment; then, for encrypted
    sources still without one (those at URLs opened with ``storage_options``), asked without echo
    when standard input is a terminal.

    Without a terminal nothing is asked: the library names the archive and the ways to give one.
    """
    from pipeline.source.passwords import Password, passwords_from_environment, read_password_file
    from pipeline.source.unlock import locked_sources

    given = read_password_file(args.password_file) if args.password_file else passwords_from_environment()
    if not sys.stdin.isatty():
        return given
    locked = locked_sources(list(sources), given, storage_options)
    if not locked:
        return given
    import getpass

    from pipeline.urls import location_name

    asked = {location_name(s): Password(getpass.getpass(f"password of {location_name(s)}: ")) for s in locked}
    return given.merged_with(Passwords(by_name=asked))
