"""Helpers shared by the StreamingDataset tests: the expected order of keys, and stock webdataset as a reference."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import torch
import webdataset

from pipeline import decode_wds_sample
from pipeline.read.stream.order import (
    rank_samples,
)

from conftest import assert_bit_exact

SEED = 7


def expected_keys(keys, epoch, rank, world, start=0, batch_size=None, drop_last=False, shuffle=True):
    return [keys[i] for i in rank_samples(len(keys), SEED, epoch, rank, world, start, batch_size, drop_last, shuffle)]


def flat_keys(batches):
    keys = []
    for batch in batches:
        k = batch["__key__"]
        keys.extend([k] if isinstance(k, str) else k)
    return keys


def stock_samples(out: Path, split: str) -> dict[str, dict]:
    urls = sorted(glob.glob(str(out / "wds" / f"{split}-*.tar")))
    return {s["__key__"]: decode_wds_sample(s) for s in webdataset.WebDataset(urls, shardshuffle=False)}


def assert_same_as_stock(samples, stock, fields):
    keys = []
    for sample in samples:
        key = sample["__key__"]
        keys.append(key)
        assert set(sample) == {"__key__", "__pad__", *fields}
        for field in fields:
            assert isinstance(sample[field], torch.Tensor)
            assert_bit_exact(sample[field].numpy(), stock[key][field], f"{key}.{field}")
    return keys


def rank_script(imports: str, scenario: str) -> str:
    """The script each rank of a real ``torch.distributed`` (gloo) test runs: ``imports``, then for
    every scenario of its JSON config (``sc``) the ``scenario`` code, which stores what the rank saw
    in ``results[sc["name"]]``; the results go to ``<out>/rank<N>.json``. ``config``, ``rank`` and
    ``world`` are in scope, the process group is initialised."""
    body = textwrap.indent(textwrap.dedent(scenario).strip("\n"), " " * 8)
    return (
        "import json, sys\n"
        + textwrap.dedent(imports).strip("\n")
        + textwrap.dedent(
            """

            def main():
                config = json.load(open(sys.argv[1]))
                rank, world = int(sys.argv[2]), int(sys.argv[3])
                dist.init_process_group(
                    "gloo", init_method=f"tcp://127.0.0.1:{config['port']}", rank=rank, world_size=world
                )
                results = {}
                for sc in config["scenarios"]:
            """
        )
        + body
        + textwrap.dedent(
            """
                json.dump(results, open(f"{config['out']}/rank{rank}.json", "w"))
                dist.destroy_process_group()


            if __name__ == "__main__":  # spawned DataLoader workers import this file as __mp_main__
                main()
            """
        )
    )
