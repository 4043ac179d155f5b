"""Storage: dtypes, ``torch.save`` with numpy-1.x pickles, zip archives and extracted trees."""

from __future__ import annotations

import io
import pickle
import types
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct

from pipeline.atomic import AtomicFile
from pipeline.errors import UsageError
from pipeline.schema import IMAGE_FIELDS, LANDMARK_FIELDS, MASK_FIELDS
from pipeline.source.passwords import Password
from pipeline.tools.synth.config import SynthConfig
from pipeline.tools.synth.encrypted import write_encrypted
from pipeline.tools.synth.sample import make_sample

#: Every member of an archive gets this timestamp, so that archives are byte-reproducible.
MEMBER_DATE_TIME = (2024, 4, 2, 12, 0, 0)


def _field_dtype(field: str, config: SynthConfig) -> np.dtype:
    if field in IMAGE_FIELDS:
        return np.dtype(config.image_dtype)
    if field in MASK_FIELDS:
        return np.dtype(config.mask_dtype)
    if field in LANDMARK_FIELDS:
        return np.dtype(config.landmark_dtype)
    return np.dtype(config.label_dtype)


def cast_sample(sample: dict[str, np.ndarray], config: SynthConfig) -> dict[str, np.ndarray | torch.Tensor]:
    """The sample in the configured dtypes and value kind (every value its own, contiguous buffer,
    so tensors do not share storages and pickles do not depend on views)."""
    cast = {f: a.astype(_field_dtype(f, config), order="C") for f, a in sample.items()}
    if config.values == "tensor":
        return {f: torch.from_numpy(a) for f, a in cast.items()}
    return cast


class _Numpy1Pickler(pickle._Pickler):
    """Pure-Python pickler that names ``_reconstruct`` by its numpy 1.x module, as the 2024
    release does; numpy 2 itself would write ``numpy._core.multiarray``."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


#: ``dump`` writes the legacy format's header pickles (magic number, protocol, system info).
_PICKLE_MODULES = {
    1: types.SimpleNamespace(Pickler=_Numpy1Pickler, dump=pickle.dump, __name__="numpy1_pickle"),
    2: pickle,
}


def pt_bytes(sample: dict, config: SynthConfig, protocol: int = 2) -> bytes:
    """``torch.save`` of ``sample`` as given (cast it first) with the configured numpy pickle style
    and serialization format.

    Protocol 2 is torch's default, so numpy buffers go through ``_codecs.encode`` as in the release.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes when a protocol is not its default
        torch.save(
            sample,
            buffer,
            pickle_module=_PICKLE_MODULES[config.numpy_pickle],
            pickle_protocol=protocol,
            _use_new_zipfile_serialization=config.serialization == "zip",
        )
    return buffer.getvalue()


def member_name(root: str, patient: int, shape: int) -> str:
    """Archive member of one sample: ``"<root>/p<patient>/aug<shape>.pt"``, no zero padding."""
    return f"{root}/p{patient}/aug{shape}.pt"


def iter_members(config: SynthConfig) -> Iterator[tuple[str, int, int]]:
    """(member name, patient, shape) of every sample, in archive order: patients, then shapes 1..M."""
    for patient in range(config.first_patient, config.first_patient + config.patients):
        for shape in range(1, config.shapes + 1):
            yield member_name(config.root, patient, shape), patient, shape


# AppleDouble header ("._" resource-fork file) and a .DS_Store prefix: content that is clearly
# not a torch file, as in archives made with macOS Finder.
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x00"
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(6136)


def _payloads(config: SynthConfig) -> Iterator[tuple[str, bytes]]:
    """Every member's name and bytes in archive order, junk included when configured."""
    if config.junk:
        yield f"{config.root}/.DS_Store", _DS_STORE
    for name, patient, shape in iter_members(config):
        sample = cast_sample(make_sample(patient, shape, config.seed), config)
        yield name, pt_bytes(sample, config)
        if config.junk and patient == config.first_patient and shape == 1:
            head, _, tail = name.rpartition("/")
            yield f"__MACOSX/{head}/._{tail}", _APPLEDOUBLE


def write_archive(path: str | Path, config: SynthConfig, password: Password | None = None) -> Path:
    """Write a release-style zip to ``path`` (tmp file + rename, so a crash leaves no partial zip).

    With ``config.encrypt``, every member is encrypted with ``password`` (ZipCrypto is written by
    plain Python at about 2 MB/s, a second per sample; AES in milliseconds).
    """
    path = Path(path)
    if (config.encrypt != "none") != (password is not None):
        raise UsageError("an encrypted synthetic archive needs a password, and only an encrypted one takes one")
    compression = zipfile.ZIP_DEFLATED if config.compression == "deflate" else zipfile.ZIP_STORED
    target = AtomicFile(path)
    try:
        with zipfile.ZipFile(target.file, "w", allowZip64=True) as archive:
            for name, data in _payloads(config):
                info = zipfile.ZipInfo(name, date_time=MEMBER_DATE_TIME)
                info.compress_type = compression
                info.external_attr = 0o644 << 16
                if password is None:
                    archive.writestr(info, data)
                else:
                    write_encrypted(archive, info, data, password, config.encrypt)
        target.commit()
    except BaseException:
        target.abort()
        raise
    return path


def write_tree(directory: str | Path, config: SynthConfig) -> Path:
    """Write the members as files under ``directory``, as if the archive had been extracted."""
    directory = Path(directory)
    for name, data in _payloads(config):
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return directory
