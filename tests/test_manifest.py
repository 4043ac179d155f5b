"""The manifest's one parser: typed records that round-trip the JSON, and one line naming what is wrong."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import NotFoundError, OutputError
from pipeline.store.manifest import Manifest, parse_manifest, read_manifest
from pipeline.store.plan import Plan
from pipeline.store.progress import read_plan, write_plan

from conftest import manifest_json


def test_the_records_round_trip_the_json_a_conversion_wrote(converted):
    written = manifest_json(converted)
    manifest = read_manifest(converted)
    assert isinstance(manifest, Manifest) and manifest.to_json() == written
    assert manifest.split("train").samples == 12 and sum(s.samples for s in manifest.split("train").shards) == 12
    assert set(manifest.schema) == set(written["schema"]) and manifest.identity.splits["test"] == tuple(
        written["splits"]["test"]["keys"]
    )


def test_a_plan_round_trips_through_its_progress_record(converted, tmp_path):
    plan = read_manifest(converted).plan
    write_plan(tmp_path, plan)
    assert read_plan(tmp_path) == plan and isinstance(plan, Plan)
    assert read_plan(tmp_path / "nothing-here") is None


def _damaged(converted, change) -> bytes:
    data = manifest_json(converted)
    change(data)
    return json.dumps(data).encode()


DAMAGE = {
    "a missing member": (lambda d: d["splits"]["train"].pop("keys"), r"manifest\.json\.splits\.train\.keys: missing"),
    "a wrong type": (
        lambda d: d["splits"]["test"]["shards"][0].update(bytes="12"),
        r"\.splits\.test\.shards\[0\]\.bytes: expected int, found str",
    ),
    "a bool for an int": (lambda d: d.update(group_samples=True), r"\.group_samples: expected int, found bool"),
    "keys and samples disagree": (
        lambda d: d["splits"]["train"].update(samples=11),
        r"\.splits\.train\.keys: has 12 entries, samples says 11",
    ),
    "a shard left out": (
        lambda d: d["splits"]["train"]["shards"].pop(),
        r"\.splits\.train\.shards: hold \d+ samples, samples says 12",
    ),
    "digests short of the keys": (
        lambda d: d["splits"]["train"]["shards"][0]["digests"]["img"].pop(),
        r"\.shards\[0\]\.digests\.img: has \d+ entries, expected \d+",
    ),
    "a malformed schema": (
        lambda d: d["schema"]["img"].pop("dtype"),
        r"manifest\.json\.schema: malformed \(KeyError: 'dtype'\)",
    ),
    "another format": (lambda d: d.update(format_version=2), r"not an ssmspine-shards v1 manifest"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_manifest_is_one_line_naming_the_member(converted, name):
    change, message = DAMAGE[name]
    with pytest.raises(OutputError, match=message) as error:
        parse_manifest(_damaged(converted, change), "out/manifest.json")
    assert "\n" not in str(error.value) and str(error.value).startswith("out/manifest.json")


def test_an_unknown_split_is_a_not_found_error_naming_the_splits(converted):
    with pytest.raises(NotFoundError, match=r"no split 'val' \(has \['test', 'train'\]\)"):
        read_manifest(converted).split("val")
