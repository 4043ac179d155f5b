"""The synthetic sets of ``make bench-scale``: two archives each (Train and Test, about 4:1 like the
release), generated once in two processes and reused, with how long generating them took."""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.scale.config import GENERATION_JSON, TEST_FIRST_PATIENT, TRAIN_PATIENTS


def layout(samples: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(patients, shapes) of the Train and of the Test archive of a set of ``samples`` samples.

    Train gets :data:`~benchmarks.scale.config.TRAIN_PATIENTS` patients and about 4/5 of the
    samples, Test one patient and the rest; sets too small for that get one patient in each.
    """
    if samples < 2:
        raise ValueError(f"a set needs at least 2 samples (one per archive), got {samples}")
    shapes = round(samples * 4 / 5 / TRAIN_PATIENTS)
    if shapes < 1 or samples - TRAIN_PATIENTS * shapes < 1:
        return (1, samples - 1), (1, 1)
    return (TRAIN_PATIENTS, shapes), (1, samples - TRAIN_PATIENTS * shapes)


def set_configs(samples: int) -> dict[str, Any]:
    """Archive file name → :class:`~pipeline.tools.synth.SynthConfig` of the set's two archives."""
    from pipeline.tools.synth import SynthConfig

    (train_patients, train_shapes), (test_patients, test_shapes) = layout(samples)
    return {
        "SSMSpine_Train.zip": SynthConfig(patients=train_patients, shapes=train_shapes, root="Train"),
        "SSMSpine_Test.zip": SynthConfig(
            patients=test_patients, shapes=test_shapes, root="Test", first_patient=TEST_FIRST_PATIENT
        ),
    }


def set_name(samples: int) -> str:
    """Folder of a set, named by its layout: ``train4x128-test1x128``."""
    (tp, ts), (sp, ss) = layout(samples)
    return f"train{tp}x{ts}-test{sp}x{ss}"


def _write_archive(path: Path, config: Any) -> float:
    from pipeline.tools.synth import write_archive

    started = time.perf_counter()
    write_archive(path, config)
    return time.perf_counter() - started


def make_set(base: Path, samples: int) -> tuple[Path, dict]:
    """The set's folder (archives made once, see :func:`~benchmarks.common.made_once`) and
    how long generating it took (then or in the run that made it)."""
    from benchmarks.common import made_once

    made_now = False

    def write(folder: Path) -> None:
        nonlocal made_now
        folder.mkdir(parents=True)
        configs = set_configs(samples)
        started = time.perf_counter()
        with ProcessPoolExecutor(len(configs), mp_context=get_context("spawn")) as pool:
            futures = {name: pool.submit(_write_archive, folder / name, c) for name, c in configs.items()}
            archive_seconds = {name: f.result() for name, f in futures.items()}
        record = {
            "samples": samples,
            "seconds": time.perf_counter() - started,
            "processes": len(configs),
            "archive_seconds": archive_seconds,
            "date": time.strftime("%Y-%m-%d"),
        }
        (folder / GENERATION_JSON).write_text(json.dumps(record, indent=1))
        made_now = True

    folder = made_once(base / set_name(samples), write)
    record = json.loads((folder / GENERATION_JSON).read_text())
    return folder, {**record, "made_this_run": made_now}


def archives(folder: Path) -> list[Path]:
    """The set's two archives in ``folder``: Train, then Test."""
    return [folder / name for name in ("SSMSpine_Train.zip", "SSMSpine_Test.zip")]
