"""``make bench-scale``: how the cost of ``convert``, ``verify`` and the readers grows with the archive.

Three synthetic sets in the release layout, each two archives: ``SSMSpine_Train.zip`` (root
``Train``, 4 patients from 1) and ``SSMSpine_Test.zip`` (root ``Test``, 1 patient from 81), about
4:1 like the release (10,000 : 2,500 samples):

* **fixed** — 2 samples (1 + 1): what a command costs whatever the archive's size (interpreter
  and imports, cluster start-up with each worker importing torch, planning, shutting down);
* **small** — 64 samples (52 + 12), the size of the other benchmarks;
* **large** — 640 samples (512 + 128) by default; ``--samples N`` (``make bench-scale
  SCALE_SAMPLES=N``) sets it, e.g. 160 for a quick check.

They are generated once under ``data/bench-scale/`` (each set's two archives in two processes)
and reused; how long that took is kept next to them and reported.

What is measured, for each set, in ``repeats`` rounds (each round runs every set; a set's
commands run in the order below, so each verify checks the conversion of the same round):

* whole commands as a user runs them, each in a fresh process, ``--workers 2 --no-progress``:
  ``ssmspine convert SRC... --out OUT`` (into an emptied ``OUT``), ``ssmspine verify SRC...
  --out OUT`` (against the sources) and ``ssmspine verify --out OUT`` (against the manifest):
  wall time from starting the process to its exit;
* peak memory of each process of the command (see
  :class:`~benchmarks.scale.commands.PeakMemory`): of each Dask worker and of the command's
  own process (the coordinator, which also runs the scheduler);
* for the small and large sets, the readers: ``StreamingDataset(OUT, split="train",
  fields=("img", "label"), batch_size=8)`` and ``ZarrDataset(OUT, "train", fields=("img",
  "label"))``, each in a fresh process (see :func:`~benchmarks.scale.probe.probe_reader`):
  importing the reader, constructing the dataset (start-up: whatever the constructor reads, such
  as the manifest), and the first batch of 8 from a fresh iterator of ``DataLoader`` in process
  (no workers; ZarrDataset in random order), which includes what a reader defers to its first
  batch.
  The OS page cache is warm for all of it: the archives are read once before measuring, and
  every output was just written. Cold-cache figures would add the disk's time to read the bytes.

From the medians of the rounds: samples/s of each command (whole command), its cost per sample
net of the fixed cost (``(t(N) - t(fixed)) / (N - 2)``) at the small and large sizes and their
ratio (the issue's target: at most 1.2×), the ratios verify/convert per round (targets: at most
0.8 against the sources, 0.4 against the manifest), manifest bytes per sample, and estimates of
the full release (:data:`~benchmarks.scale.config.RELEASE_SAMPLES`) here and on a
:data:`~benchmarks.scale.config.WORKSTATION_CORES`-core workstation (see
:func:`~benchmarks.scale.summary.release_estimate` for the assumptions).
"""

from benchmarks.scale.commands import CommandRun, command_argv, run_command
from benchmarks.scale.config import COMMANDS, VERIFY_TARGETS
from benchmarks.scale.render import scale_lines
from benchmarks.scale.rounds import run
from benchmarks.scale.summary import summarise

__all__ = ["COMMANDS", "VERIFY_TARGETS", "CommandRun", "command_argv", "run", "run_command", "scale_lines", "summarise"]
