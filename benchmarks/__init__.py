"""Benchmarks (``make bench-convert``, ``make bench``): medians and ratios, never timed tests.

Every figure is reported next to the per-file ``torch.load`` baseline measured in the same run,
runs of the systems compared are interleaved, and each is repeated: shared machines are noisy,
and the baseline alone swings ±40 % between processes.

Not part of the installed package (``pyproject.toml`` installs ``pipeline*`` only): run them from the
repository root, ``python -m benchmarks convert|read|scale|s3`` and ``python -m benchmarks.report bench``.
No private name of a ``pipeline`` module is used here, and ``pipeline`` never imports this package
(both checked by ``tests/test_architecture.py``).
"""
