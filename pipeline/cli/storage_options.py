"""Where a command's fsspec options come from: ``--storage-options FILE``, else the file named by
``SSMSPINE_STORAGE_OPTIONS``. A JSON object (``{"endpoint_url": ..., "key": ..., "secret": ...}``),
never a command-line value: ``ps`` and shell history would show the secrets it holds. One file
serves every URL of the command, output and sources: flat keys apply to every URL, and a key named
after a protocol holding an object (``{"s3": {...}, "https": {"headers": {...}}}``) to that
protocol's URLs only (:func:`~pipeline.io.filesystems.options_for`).

One option, added by :func:`add_storage_options_option` to every command that reads or writes an
output or reads sources, and one parser, :func:`run_storage_options`, so that every command takes the same file the
same way and names it the same way when it is wrong. The file's contents are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pipeline.errors import UsageError

#: The environment variable naming the options file when ``--storage-options`` is not given.
STORAGE_OPTIONS_VARIABLE = "SSMSPINE_STORAGE_OPTIONS"


def add_storage_options_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        metavar="FILE",
        help="a JSON object of fsspec options for the output and sources at URLs (endpoint_url, key, secret, "
        '...; {"s3": {...}} for s3:// URLs only; '
        f"else the file ${STORAGE_OPTIONS_VARIABLE} names, else the environment and fsspec's configuration)",
    )


def run_storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the run, read from ``--storage-options`` or ``$SSMSPINE_STORAGE_OPTIONS``;
    none where neither is given. A file that cannot be read or holds no JSON object is one line
    naming it (not what it holds)."""
    path = args.storage_options or os.environ.get(STORAGE_OPTIONS_VARIABLE, "").strip()
    if not path:
        return {}
    where = f"storage options file {path}" + ("" if args.storage_options else f" (${STORAGE_OPTIONS_VARIABLE})")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as exc:
        raise UsageError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise UsageError(f"{where}: not JSON ({why})") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise UsageError(f"{where}: must hold a JSON object of fsspec options, not {kind}")
    return data
