"""The settings of ``make bench-scale``: the sets' sizes and layout, the commands and readers measured,
the issue's targets, and the release and workstation the estimates are made for."""

from __future__ import annotations

from pathlib import Path

#: The release: Train 10,000 + Test 2,500 samples.
RELEASE_SAMPLES = 12_500
#: Dask workers of every command measured.
WORKERS = 2
#: The workstation the release estimate is made for.
WORKSTATION_CORES = 16
#: Assumed bandwidth of the workstation's disk for the bytes a command reads and writes (a
#: workstation NVMe SSD under mixed reads and writes; this machine's figures need no such guess).
WORKSTATION_DISK_BYTES_PER_S = 1.5e9
#: Samples of the three sets; the large one is :func:`~benchmarks.scale.rounds.run`'s ``samples``.
FIXED_SAMPLES = 2
SMALL_SAMPLES = 64
LARGE_SAMPLES = 640
#: The sets by name, smallest first.
SETS = ("fixed", "small", "large")
#: Train patients (from 1) and the first Test patient (Test has one), as in the release's numbering.
TRAIN_PATIENTS = 4
TEST_FIRST_PATIENT = 81
#: The whole commands measured, in the order each round runs them on a set.
COMMANDS = ("convert", "verify sources", "verify manifest")
#: The readers probed (small and large sets), and the size of the first batch they are timed on.
READERS = ("StreamingDataset", "ZarrDataset")
READER_BATCH = 8
#: The issue's targets: net per-sample cost large/small, and verify's wall time against convert's.
GROWTH_TARGET = 1.2
VERIFY_TARGETS = {"verify sources": 0.8, "verify manifest": 0.4}
#: How often :class:`~benchmarks.scale.commands.PeakMemory` looks at the command's processes.
POLL_SECONDS = 0.2
#: Where the sets and outputs are kept between runs, and the record of generating a set, in its folder.
DEFAULT_SCRATCH = Path("data/bench-scale")
GENERATION_JSON = "generation.json"
