"""Benchmarks (``make bench-convert``, ``make bench``): medians and ratios, never timed tests.

Every figure is reported next to the per-file ``torch.load`` baseline measured in the same run,
runs of the systems compared are interleaved, and each is repeated: shared machines are noisy,
and the baseline alone swings ±40 % between processes.
"""
