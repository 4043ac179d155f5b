"""What a user sees: exit codes as the README states them, one clear line per expected error, logs without bars."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.cli import main
from pipeline.progress import LineProgress, progress_bar
from pipeline.tools.synth import SynthConfig, write_archive

from conftest import copy_output


@pytest.fixture(scope="module")
def bad_archive(tmp_path_factory) -> Path:
    """Two good samples and an empty member."""
    archive = write_archive(tmp_path_factory.mktemp("cli") / "bad.zip", SynthConfig(patients=1, shapes=2))
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("Train/p1/aug9.pt", b"")
    return archive


def _ssmspine(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command in a fresh process, stderr a pipe (as in CI logs or under nohup)."""
    command = [str(Path(sys.executable).with_name("ssmspine")), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_an_expected_error_is_one_line_on_stderr_without_worker_logs(bad_archive, tmp_path):
    result = _ssmspine("convert", str(bad_archive), "--out", "out", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"ssmspine convert: error: {bad_archive}: Train/p1/aug9.pt: is empty"]
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.slow
def test_skip_bad_in_a_log_prints_plain_progress_lines_and_the_summary(bad_archive, tmp_path):
    result = _ssmspine("convert", str(bad_archive), "--out", "out", "--workers", "1", "--skip-bad", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr, "no carriage-return bars in a log"
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("converting: ") for line in lines), lines
    assert lines[-1].startswith("converting: 3/3 samples (100%)")
    assert (
        f"rejected 1 member(s), listed in rejected.json:\n  {bad_archive}: Train/p1/aug9.pt: is empty" in result.stdout
    )
    assert json.loads((tmp_path / "out" / "rejected.json").read_text())[0]["member"] == "Train/p1/aug9.pt"


def test_line_progress_writes_a_line_now_and_then_and_at_the_end():
    now = [0.0]
    log = io.StringIO()
    progress = LineProgress(100, "verifying", file=log, every=30, clock=lambda: now[0])
    for _ in range(9):
        now[0] += 10
        progress.update(10)
    assert log.getvalue().splitlines() == [
        "verifying: 30/100 samples (30%), 1.0 samples/s, 30 s",
        "verifying: 60/100 samples (60%), 1.0 samples/s, 60 s",
        "verifying: 90/100 samples (90%), 1.0 samples/s, 90 s",
    ]
    progress.update(10)
    assert log.getvalue().splitlines()[-1] == "verifying: 100/100 samples (100%), 1.1 samples/s, 90 s"


def test_progress_is_a_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(10, "converting"), LineProgress)
    assert not isinstance(progress_bar(10, "converting", enabled=False), LineProgress)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress_bar(10, "converting")
    assert not isinstance(bar, LineProgress) and not bar.disable
    bar.close()


@pytest.mark.slow
def test_exit_codes_as_the_readme_states(converted, train_zip, test_zip, bad_archive, tmp_path, dask_scheduler, capsys):
    cluster = ["--scheduler", dask_scheduler, "--no-progress"]
    out = copy_output(converted, tmp_path)
    cases = {
        "verify passes: 0": (["verify", str(train_zip), str(test_zip), "--out", str(out), *cluster], 0),
        "a bad member: 2": (["convert", str(bad_archive), "--out", str(tmp_path / "o1"), *cluster], 2),
        "a missing source: 2": (["convert", str(tmp_path / "none.zip"), "--out", str(tmp_path / "o2"), *cluster], 2),
        "not a zip: 2": (["convert", str(Path(__file__)), "--out", str(tmp_path / "o3"), *cluster], 2),
        "another conversion in --out: 2": (["convert", str(bad_archive), "--out", str(out), "--skip-bad", *cluster], 2),
        "no output to verify: 2": (["verify", "--out", str(tmp_path / "nothing"), *cluster], 2),
        "a bad shard size: 2": (["convert", str(train_zip), "--out", str(tmp_path / "o4"), "--shard-size", "lots"], 2),
    }
    for name, (argv, expected) in cases.items():
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        assert code == expected, name
        err = capsys.readouterr().err
        if expected == 2:
            assert len(err.strip().splitlines()) == 1 or "usage:" in err, (name, err)
    (out / "wds" / "train-000000.tar").write_bytes(b"\0" * 1024)
    assert main(["verify", "--out", str(out), *cluster]) == 1, "verify found differences: 1"


def test_an_internal_error_is_one_line_and_exit_3_and_its_traceback_with_v(monkeypatch, tmp_path, capsys):
    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "info", broken)
    assert main(["info", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "ssmspine info: internal error: ZeroDivisionError: a bug (a bug; run again with -v for the traceback)"
    ]
    assert main(["-v", "info", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("ssmspine info: internal")


# --------------------------------------------------------------------------- --storage-options

#: Every command that reads or writes an output, as it would be run on one (``{out}``, ``{options}``).
OUTPUT_COMMANDS = {
    "convert": ["convert", "a.zip", "--out", "{out}", "--storage-options", "{options}"],
    "verify": ["verify", "--out", "{out}", "--storage-options", "{options}"],
    "info": ["info", "{out}", "--storage-options", "{options}"],
    "show": ["show", "{out}", "--storage-options", "{options}"],
}


@pytest.mark.parametrize(
    "contents, says",
    [
        (None, "cannot be read (No such file or directory)"),
        ('{"key": "s3cr3t", ', "not JSON (Expecting property name enclosed in double quotes at line 1)"),
        ('["s3cr3t"]', "must hold a JSON object of fsspec options, not an array"),
    ],
    ids=["missing", "not-json", "not-an-object"],
)
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_a_bad_storage_options_file_is_one_line_naming_it_before_any_work(
    command, contents, says, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    options = tmp_path / "options.json"
    if contents is not None:
        options.write_text(contents)
    argv = [a.format(out="s3://bucket/out", options=options) for a in OUTPUT_COMMANDS[command]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"ssmspine {command}: error: storage options file {options}: {says}"]
    assert "s3cr3t" not in captured.err + captured.out and list(tmp_path.iterdir()) == ([options] if contents else [])


def test_the_storage_options_variable_names_the_file_when_the_option_does_not(tmp_path, capsys, monkeypatch):
    from pipeline.cli.storage_options import STORAGE_OPTIONS_VARIABLE

    monkeypatch.setenv(STORAGE_OPTIONS_VARIABLE, str(tmp_path / "nowhere.json"))
    assert main(["info", "s3://bucket/out"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ssmspine info: error: storage options file {tmp_path / 'nowhere.json'} (${STORAGE_OPTIONS_VARIABLE}): "
        "cannot be read (No such file or directory)"
    ]
