"""tfds SynthTalk builder: real array_record files in a temp dir, checked against generate_clip."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from _synth_fixture import TINY, synth_data  # noqa: F401  (session fixture)
from vasa_jax.data import builders, synthtalk
from vasa_jax.errors import ConfigError


def _records(source):
    return [source[i] for i in range(len(source))]


def test_counts_and_files(synth_data):
    cfg = TINY
    assert len(synth_data.sources["train"]) == cfg["num_train_identities"] * cfg["clips_per_identity"]
    assert len(synth_data.sources["test"]) == cfg["num_test_identities"] * cfg["clips_per_identity"]
    name = builders.config_name(**{k: cfg[k] for k in (
        "resolution", "num_frames", "num_train_identities", "num_test_identities",
        "clips_per_identity", "seed")})
    version_dir = os.path.join(synth_data.data_dir, "synthtalk", name,
                               str(builders.SynthTalk.VERSION))
    files = sorted(os.listdir(version_dir))
    assert any(f.startswith("synthtalk-train.array_record") for f in files), files
    assert any(f.startswith("synthtalk-test.array_record") for f in files), files


def test_identities_disjoint_and_complete(synth_data):
    config = builders.SynthTalkConfig(**TINY)
    per_split = {}
    for split, source in synth_data.sources.items():
        ids = collections.Counter(int(r["identity"]) for r in _records(source))
        per_split[split] = ids
        # Every identity has exactly clips_per_identity clips, with distinct clip seeds.
        assert set(ids.values()) == {TINY["clips_per_identity"]}
        seeds = [int(r["clip_seed"]) for r in _records(source)]
        assert len(set(seeds)) == len(seeds)
    assert set(per_split["train"]) == set(builders.train_identity_ids(config))
    assert set(per_split["test"]) == set(builders.test_identity_ids(config))
    assert not set(per_split["train"]) & set(per_split["test"])
    assert all(i < 10**9 for i in per_split["train"])
    assert all(i >= 10**9 for i in per_split["test"])


def test_identity_ids_disjoint_for_many_seeds():
    for seed in range(20):
        cfg = builders.SynthTalkConfig(resolution=64, num_frames=1, num_train_identities=500,
                                       num_test_identities=500, clips_per_identity=1, seed=seed)
        train, test = builders.train_identity_ids(cfg), builders.test_identity_ids(cfg)
        assert len(set(train)) == 500 and len(set(test)) == 500
        assert not set(train) & set(test)


@pytest.mark.parametrize("split", ["train", "test"])
def test_record_decodes_to_generated_clip(synth_data, split):
    record = synth_data.sources[split][1]
    clip = synthtalk.generate_clip(identity=int(record["identity"]), seed=int(record["clip_seed"]),
                                   num_frames=TINY["num_frames"], resolution=TINY["resolution"])
    frames = builders.decode_frames(record["frames"])
    assert frames.dtype == np.uint8
    assert frames.shape == (TINY["num_frames"], 64, 64, 3)
    np.testing.assert_array_equal(frames, clip.frames)
    np.testing.assert_array_equal(record["audio"], clip.audio)
    assert record["audio"].shape == (TINY["num_frames"] * 640,)
    assert int(record["emotion"]) == clip.emotion
    for name in builders.FACTORS:
        assert record[name].dtype == np.asarray(clip.factors[name]).dtype, name
        np.testing.assert_array_equal(record[name], clip.factors[name], err_msg=name)
    # Decoding a subset gives exactly those frames.
    np.testing.assert_array_equal(builders.decode_frames(record["frames"], [5, 0]),
                                  clip.frames[[5, 0]])


def test_sizes_do_not_collide_and_prepare_is_idempotent(synth_data):
    small = dict(resolution=64, num_frames=3, num_train_identities=1, num_test_identities=1,
                 clips_per_identity=1, seed=0)
    sources = builders.prepare_synthtalk(synth_data.data_dir, **small)
    assert len(sources["train"]) == 1 and len(sources["test"]) == 1
    assert sources["train"][0]["frames"].shape == (3,)
    # The tiny data set in the same data_dir is untouched, and preparing it again reuses it.
    again = builders.prepare_synthtalk(synth_data.data_dir, **TINY)
    assert again["train"][0]["frames"].shape == (TINY["num_frames"],)
    # tfds.data_source finds it by config name.
    name = builders.SynthTalkConfig(**TINY).name
    by_name = tfds.data_source(f"synthtalk/{name}", data_dir=synth_data.data_dir, split="test")
    assert len(by_name) == len(synth_data.sources["test"])
    a, b = again["train"][2], synth_data.sources["train"][2]
    assert int(a["clip_seed"]) == int(b["clip_seed"])
    np.testing.assert_array_equal(a["frames"], b["frames"])


@pytest.mark.parametrize("field, value", [
    ("resolution", 100),
    ("resolution", 32),
    ("num_frames", 0),
    ("num_train_identities", -1),
    ("num_test_identities", 0),
    ("clips_per_identity", -3),
    ("seed", -1),
])
def test_bad_config_raises_config_error(tmp_path, field, value):
    fields = dict(TINY, **{field: value})
    out = tmp_path / "data"
    with pytest.raises(ConfigError, match=field) as info:
        builders.prepare_synthtalk(str(out), **fields)
    assert "\n" not in str(info.value)
    assert not out.exists()  # nothing written


def test_config_name_is_derived_from_every_field():
    base = builders.SynthTalkConfig(**TINY)
    names = {base.name}
    for field, value in [("resolution", 72), ("num_frames", 13), ("num_train_identities", 5),
                         ("num_test_identities", 3), ("clips_per_identity", 3), ("seed", 1)]:
        names.add(builders.SynthTalkConfig(**dict(TINY, **{field: value})).name)
    assert len(names) == 7
    assert builders.SynthTalkConfig(**TINY).name == base.name


def test_parallel_render_writes_the_same_records(synth_data, tmp_path, monkeypatch):
    """Two spawned render processes give byte-identical records, in the same order, as the
    single-process build of the session fixture."""
    monkeypatch.setenv(builders.RENDER_WORKERS_ENV, "2")
    assert builders.render_workers(len(synth_data.sources["train"])) == 2
    sources = builders.prepare_synthtalk(str(tmp_path / "data"), **TINY)
    for split, source in synth_data.sources.items():
        ours, ref = _records(sources[split]), _records(source)
        assert [int(r["clip_seed"]) for r in ours] == [int(r["clip_seed"]) for r in ref]
        for a, b in zip(ours, ref):
            assert sorted(a) == sorted(b)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_render_workers_value(monkeypatch, value):
    monkeypatch.setenv(builders.RENDER_WORKERS_ENV, value)
    with pytest.raises(ConfigError, match=builders.RENDER_WORKERS_ENV):
        builders.render_workers(100)


def test_render_workers_default(monkeypatch):
    monkeypatch.delenv(builders.RENDER_WORKERS_ENV, raising=False)
    assert builders.render_workers(8) == 1  # a small build stays in this process
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert builders.render_workers(10_000) == cores


def test_new_builder_leaves_no_temp_dirs(tmp_path, monkeypatch):
    # tfds' DatasetInfo.initialize_from_bucket makes an empty "tmp*tfds" dir for every builder
    # of not-yet-built data; the test suite and the demo used to leave hundreds in /tmp.
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    b = builders.make_builder(str(tmp_path / "data"), **TINY)
    assert not os.path.isdir(b.data_dir)  # not built: the path that used to leak
    assert b.info.features is not None
    assert os.listdir(scratch) == []


def test_a_split_past_the_shufflers_memory_buffer_spills_to_disk_without_tensorflow(
        synth_data, tmp_path, monkeypatch):
    """tfds sorts a split's records in memory up to 1 GB and past that spills them to bucket
    files through `tf.io.gfile`; TensorFlow is not a dependency, so a 1,536-identity 128² build
    failed with "No module named 'tensorflow'" (session 21). With the buffer set to 0 bytes
    every record goes through the bucket files: the build completes and its records equal the
    in-memory build's, in the same order."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    spilled = collections.Counter()
    real_add = shuffle._Bucket.add

    def counting_add(self, key, data):
        spilled["records"] += 1
        return real_add(self, key, data)

    monkeypatch.setattr(shuffle._Bucket, "add", counting_add)
    sources = builders.prepare_synthtalk(str(tmp_path / "data"), **TINY)
    total = sum(len(s) for s in synth_data.sources.values())
    assert spilled["records"] == total
    for split, source in synth_data.sources.items():
        ours, ref = _records(sources[split]), _records(source)
        assert [int(r["clip_seed"]) for r in ours] == [int(r["clip_seed"]) for r in ref]
        for a, b in zip(ours, ref):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")
    assert not list((tmp_path / "data").rglob("bucket_*.tmp"))  # the spill files are removed
