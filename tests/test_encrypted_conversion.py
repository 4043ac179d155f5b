"""The password-protected release, end to end: archives made by Info-ZIP and 7-Zip from one extracted
tree, converted and verified with passwords from a file, the environment or a terminal; wrong and
missing passwords stop the run before anything is written; the password is never written anywhere."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checksums import digest
from pipeline.cli import main
from pipeline.source.passwords import Password, Passwords
from pipeline.source.zip_crypto import AES_METHOD, aes_parameters
from pipeline.source.zip_methods import DEFLATE64
from pipeline.store.manifest import read_manifest
from pipeline.tools.synth import SynthConfig, write_archive, write_tree

from conftest import SMALL_SHARDS, fast_options

pytestmark = pytest.mark.slow

TRAIN_PASSWORD = "Train pass: #1 with spaces"
TEST_PASSWORD = "an0ther-Test-pw"


def _zip_tree(tree: Path, archive: Path, tool: str, password: str) -> Path:
    """``tree``'s members packed by an independent tool: Info-ZIP (ZipCrypto over deflate) or 7-Zip
    (AES-256 over Deflate64)."""
    roots = sorted(p.name for p in tree.iterdir())
    if tool == "info-zip":
        command = ["zip", "-q", "-r", "-P", password, str(archive), *roots]
    else:
        command = ["7z", "a", "-tzip", "-bd", "-bso0", "-mm=Deflate64", "-mem=AES256", f"-p{password}", str(archive)]
        command += roots
    subprocess.run(command, cwd=tree, check=True)
    return archive


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    """A Train tree zipped with ZipCrypto by Info-ZIP, a Test tree with AES-256 over Deflate64 by 7-Zip,
    and the trees."""
    base = tmp_path_factory.mktemp("release")
    train_tree = write_tree(base / "train_tree", SynthConfig(patients=1, shapes=3))
    test_tree = write_tree(base / "test_tree", SynthConfig(patients=1, shapes=2, first_patient=81, root="Test", seed=1))
    train = _zip_tree(train_tree, base / "SSMSpine_Train.zip", "info-zip", TRAIN_PASSWORD)
    test = _zip_tree(test_tree, base / "SSMSpine_Test.zip", "7z", TEST_PASSWORD)
    with zipfile.ZipFile(train) as zipcrypto, zipfile.ZipFile(test) as aes:
        samples = [i for i in zipcrypto.infolist() if i.filename.endswith(".pt")]
        assert all(i.flag_bits & 1 and i.compress_type == zipfile.ZIP_DEFLATED for i in samples)
        samples = [i for i in aes.infolist() if i.filename.endswith(".pt")]
        assert all(i.compress_type == AES_METHOD and aes_parameters(i.extra).method == DEFLATE64 for i in samples)
    return {
        "train": train,
        "test": test,
        "train_tree": train_tree,
        "test_tree": test_tree,
    }


@pytest.fixture(scope="module")
def password_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "passwords.txt"
    path.write_text(
        f"# the authors' e-mail\nSSMSpine_Train.zip: {TRAIN_PASSWORD}\nSSMSpine_Test.zip: {TEST_PASSWORD}\n"
    )
    return path


def _cluster(scheduler: str) -> list[str]:
    return ["--scheduler", scheduler, "--no-progress"]


def _files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_two_archives_with_different_passwords_convert_and_verify_bit_exact(
    release, password_file, tmp_path, dask_scheduler, capsys
):
    out = tmp_path / "out"
    command = [str(release["train"]), str(release["test"]), "--out", str(out), "--password-file", str(password_file)]
    assert main(["-v", "convert", *command, "--shard-size", str(SMALL_SHARDS), *_cluster(dask_scheduler)]) == 0
    verify_command = [str(release["train"]), str(release["test"]), "--out", str(out), "--password-file"]
    assert main(["verify", *verify_command, str(password_file), *_cluster(dask_scheduler)]) == 0
    printed = capsys.readouterr()
    assert "both formats: OK" in printed.out

    manifest = read_manifest(out)
    assert {split: entry.samples for split, entry in manifest.splits.items()} == {"train": 3, "test": 2}
    for split, tree in (("train", release["train_tree"]), ("test", release["test_tree"])):
        entry = manifest.splits[split]
        for shard in entry.shards:
            for row, key in enumerate(shard.keys):
                member = entry.members[entry.keys.index(key)].member
                trusted = load_trusted_file(tree / member)
                for field, array in trusted.items():
                    assert shard.digests[field][row] == digest(array), f"{split} {key} {field}: not bit-exact"

    for secret in (TRAIN_PASSWORD, TEST_PASSWORD):
        assert secret not in printed.out + printed.err, "the password is never printed, nor logged with -v"
        assert not _files_holding(out, secret.encode()), "the password is in no file the run wrote"


def load_trusted_file(path: Path) -> dict[str, np.ndarray]:
    """The unencrypted reading of a tree's file, as the authors load it (trusted: we wrote it)."""
    data = torch.load(path, weights_only=False)
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}


@pytest.mark.parametrize("how", ["wrong", "wrong for one of two", "missing"])
def test_a_wrong_or_missing_password_is_one_line_exit_2_and_nothing_written(
    how, release, tmp_path, dask_scheduler, capsys, monkeypatch
):
    monkeypatch.delenv("SSMSPINE_ZIP_PASSWORD", raising=False)
    secrets = tmp_path / "pw.txt"
    sources = [str(release["train"])]
    if how == "wrong":
        secrets.write_text("not the password\n")
    elif how == "wrong for one of two":
        secrets.write_text(f"SSMSpine_Train.zip: {TRAIN_PASSWORD}\nSSMSpine_Test.zip: {TRAIN_PASSWORD}\n")
        sources.append(str(release["test"]))
    out = tmp_path / "out"
    options = ["--password-file", str(secrets)] if how != "missing" else []
    assert main(["convert", *sources, "--out", str(out), *options, *_cluster(dask_scheduler)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1, printed.err
    culprit = release["test"] if how == "wrong for one of two" else release["train"]
    assert printed.err.startswith(f"ssmspine convert: error: {culprit}: ")
    if how == "missing":
        assert "is encrypted, and no password was given" in printed.err
        assert "--password-file" in printed.err and "SSMSPINE_ZIP_PASSWORD" in printed.err
    else:
        assert "the password given does not open it" in printed.err
        assert TRAIN_PASSWORD not in printed.err
    assert not out.exists(), "nothing is written before the password is known to open every archive"


def test_the_environment_variable_gives_the_password_and_a_terminal_is_asked_for_the_rest(
    release, tmp_path, dask_scheduler, capsys, monkeypatch
):
    """SSMSPINE_ZIP_PASSWORD opens Train; Test's (another) is asked for without echo, by name."""
    monkeypatch.setenv("SSMSPINE_ZIP_PASSWORD", TRAIN_PASSWORD)
    asked = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or TEST_PASSWORD)
    # the environment's password does not open Test: the run refuses rather than asks
    out = tmp_path / "out"
    assert main(["convert", str(release["test"]), "--out", str(out), *_cluster(dask_scheduler)]) == 2
    assert "does not open it" in capsys.readouterr().err and asked == []

    monkeypatch.delenv("SSMSPINE_ZIP_PASSWORD")
    passwords = tmp_path / "train-only.txt"
    passwords.write_text(f"SSMSpine_Train.zip: {TRAIN_PASSWORD}\n")
    sources = [str(release["train"]), str(release["test"])]
    command = ["convert", *sources, "--out", str(out), "--password-file", str(passwords), *_cluster(dask_scheduler)]
    assert main(command) == 0, capsys.readouterr().err
    assert asked == ["password of SSMSpine_Test.zip: "], "only the archive without a password is asked for"
    assert read_manifest(out).splits["test"].samples == 2


def test_an_encrypted_zip_in_a_bucket_converts_in_place(release, password_file, s3_server, tmp_path, dask_scheduler):
    import fsspec

    bucket = s3_server.new_bucket()
    fsspec.filesystem("s3", skip_instance_cache=True).put_file(str(release["test"]), f"{bucket}/r/SSMSpine_Test.zip")
    url = f"s3://{bucket}/r/SSMSpine_Test.zip"
    out = tmp_path / "out"
    from pipeline.convert import convert
    from pipeline.source.passwords import read_password_file
    from pipeline.verify import verify

    passwords = read_password_file(password_file)
    summary = convert([url], out, fast_options(dask_scheduler, passwords=passwords))
    assert summary.samples == 2
    report = verify(out, [url], scheduler=dask_scheduler, passwords=passwords)
    assert report.ok and report.samples == 2, report.problems
    wrong = Passwords.for_all("nope")
    with pytest.raises(Exception, match=r"s3://.*SSMSpine_Test\.zip: the password given does not open it"):
        verify(out, [url], scheduler=dask_scheduler, passwords=wrong)


def test_make_shards_passes_the_password_file(tmp_path):
    """``make shards SRC=... PASSWORD_FILE=...`` hands the file to convert and verify (a dry run)."""
    makefile = Path(__file__).parents[1] / "Makefile"
    result = subprocess.run(
        ["make", "-n", "-f", str(makefile), "shards", "SRC=a.zip b.zip", "PASSWORD_FILE=my secrets.txt"],
        cwd=makefile.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if " convert " in line or " verify " in line]
    assert len(lines) == 2 and all("--password-file 'my secrets.txt'" in line for line in lines), result.stdout


def test_synth_writes_archives_that_independent_tools_open(tmp_path, capsys):
    """``ssmspine synth --encrypt``: 7-Zip tests them with the password, and refuses a wrong one."""
    secrets = tmp_path / "pw.txt"
    secrets.write_text("synthetic secret\n")
    for encryption in ("zipcrypto", "aes"):
        archive = tmp_path / f"{encryption}.zip"
        command = ["synth", str(archive), "--shapes", "1", "--encrypt", encryption, "--password-file", str(secrets)]
        assert main(command) == 0
        ok = subprocess.run(["7z", "t", "-psynthetic secret", str(archive)], capture_output=True, text=True)
        assert ok.returncode == 0 and "Everything is Ok" in ok.stdout, ok.stdout
        bad = subprocess.run(["7z", "t", "-pwrong", str(archive)], capture_output=True, text=True)
        assert bad.returncode != 0
    assert "synthetic secret" not in capsys.readouterr().out


def _flip_a_byte_inside(archive: Path, member: str) -> None:
    """Alter one byte in the middle of ``member``'s encrypted data (the directory stays intact)."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0x40
    archive.write_bytes(bytes(data))


def test_an_altered_encrypted_member_is_named_and_skipped_with_skip_bad(tmp_path, dask_scheduler, capsys):
    password = "skip the bad one"
    archive = write_archive(
        tmp_path / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=3, encrypt="aes"), Password(password)
    )
    _flip_a_byte_inside(archive, "Train/p1/aug2.pt")
    secrets = tmp_path / "pw.txt"
    secrets.write_text(password + "\n")
    out = tmp_path / "out"
    command = ["convert", str(archive), "--out", str(out), "--password-file", str(secrets), *_cluster(dask_scheduler)]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "Train/p1/aug2.pt: its AES authentication code does not match" in error and len(error.splitlines()) == 1

    assert main([*command, "--skip-bad"]) == 0
    printed = capsys.readouterr()
    rejected = json.loads((out / "rejected.json").read_text())
    assert [(r["member"], "authentication code" in r["reason"]) for r in rejected] == [("Train/p1/aug2.pt", True)]
    assert read_manifest(out).splits["train"].keys == ["p01_aug001", "p01_aug003"]
    assert password not in printed.out + printed.err and not _files_holding(out, password.encode())
