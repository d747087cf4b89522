"""grain pipelines on the tiny prepared SynthTalk data set (real array_record files, no mocks)."""

from __future__ import annotations

import itertools

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from _synth_fixture import TINY, synth_data  # noqa: F401  (session fixture)
from vasa_jax.data import builders, pipelines
from vasa_jax.errors import ConfigError

T = TINY["num_frames"]
W, K = 4, 6


def _take(ds_or_it, n):
    it = iter(ds_or_it)
    return [next(it) for _ in range(n)]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _examples(batches):
    """Batches → list of per-example dicts."""
    out = []
    for b in batches:
        n = len(next(iter(b.values())))
        out.extend({k: v[i] for k, v in b.items()} for i in range(n))
    return out


@pytest.fixture
def train(synth_data):
    return synth_data.sources["train"]


def _stage1(train, seed=0, **kw):
    kw.setdefault("batch_size", 4)
    return pipelines.stage1_dataset(train, seed=seed, **kw)


def _stage2(train, seed=0, **kw):
    kw.setdefault("batch_size", 4)
    return pipelines.stage2_dataset(train, window=kw.pop("window", W), history=kw.pop("history", K),
                                    seed=seed, **kw)


@pytest.mark.parametrize("make", [_stage1, _stage2], ids=["stage1", "stage2"])
def test_same_seed_same_batches_different_seed_different(train, make):
    a = _take(make(train, seed=3), 3)
    b = _take(make(train, seed=3), 3)
    c = _take(make(train, seed=4), 3)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not all(_equal(x, y) for x, y in zip(a, c))


def test_stage1_pairs_come_from_one_clip_and_other_from_another_identity(train):
    batches = list(_stage1(train, num_epochs=2, pairs_per_clip=2, read_threads=2))
    assert len(batches) == 2 * len(train) * 2 // 4
    b = batches[0]
    assert b["source"].shape == (4, 64, 64, 3) and b["source"].dtype == np.uint8
    assert b["other"].shape == (4, 64, 64, 3) and b["driver"].dtype == np.uint8
    assert b["source_rotation"].shape == (4, 3) and b["driver_mouth"].shape == (4, 3)
    records = [train[i] for i in range(len(train))]
    frames = [builders.decode_frames(r["frames"]) for r in records]
    examples = _examples(batches)
    for ex in examples:
        r = int(ex["record_index"])
        rec = records[r]
        s, d = int(ex["source_frame"]), int(ex["driver_frame"])
        assert s != d
        assert int(ex["identity"]) == int(rec["identity"])
        assert int(ex["clip_seed"]) == int(rec["clip_seed"])
        np.testing.assert_array_equal(ex["source"], frames[r][s])
        np.testing.assert_array_equal(ex["driver"], frames[r][d])
        for f in pipelines.STAGE1_FACTORS:
            np.testing.assert_array_equal(ex[f"source_{f}"], rec[f][s], err_msg=f)
            np.testing.assert_array_equal(ex[f"driver_{f}"], rec[f][d], err_msg=f)
        o = int(ex["other_record_index"])
        assert int(ex["other_identity"]) == int(records[o]["identity"])
        assert int(ex["other_identity"]) != int(ex["identity"])
        np.testing.assert_array_equal(ex["other"], frames[o][int(ex["other_frame"])])
        for f in pipelines.STAGE1_FACTORS:
            np.testing.assert_array_equal(ex[f"other_{f}"], records[o][f][int(ex["other_frame"])],
                                          err_msg=f)
    # Each epoch visits every clip pairs_per_clip times.
    per_epoch = len(examples) // 2
    for e in range(2):
        counts = np.bincount([int(x["record_index"]) for x in examples[e * per_epoch:(e + 1) * per_epoch]],
                             minlength=len(train))
        assert set(counts.tolist()) == {2}


def test_stage1_with_identities_table_skips_search(train):
    ids = [int(train[i]["identity"]) for i in range(len(train))]
    ex = _examples(_take(_stage1(train, identities=ids), 2))
    assert all(int(e["other_identity"]) != int(e["identity"]) for e in ex)
    assert all(ids[int(e["other_record_index"])] == int(e["other_identity"]) for e in ex)


def test_stage1_cross_clip_pairs_take_the_driver_from_another_clip_of_the_identity(train):
    ids = pipelines.record_identities(train)
    assert ids.tolist() == [int(train[i]["identity"]) for i in range(len(train))]
    records = [train[i] for i in range(len(train))]
    frames = [builders.decode_frames(r["frames"]) for r in records]
    # Every identity of the tiny set has two clips: prob 1 moves every driver to the other one.
    ex = _examples(_take(_stage1(train, identities=ids, cross_clip_prob=1.0), 4))
    for e in ex:
        r, dr = int(e["record_index"]), int(e["driver_record_index"])
        assert dr != r and ids[dr] == ids[r]
        np.testing.assert_array_equal(e["source"], frames[r][int(e["source_frame"])])
        np.testing.assert_array_equal(e["driver"], frames[dr][int(e["driver_frame"])])
        for f in pipelines.STAGE1_FACTORS:
            np.testing.assert_array_equal(e[f"driver_{f}"], records[dr][f][int(e["driver_frame"])])
    # A share in between mixes both kinds; 0 keeps the default stream exactly.
    mixed = _examples(_take(_stage1(train, identities=ids, cross_clip_prob=0.5), 8))
    moved = [int(e["driver_record_index"]) != int(e["record_index"]) for e in mixed]
    assert any(moved) and not all(moved)
    off = _take(_stage1(train, identities=ids, cross_clip_prob=0.0), 2)
    default = _take(_stage1(train, identities=ids), 2)
    assert all(_equal(a, b) for a, b in zip(off, default))
    assert all((b["driver_record_index"] == b["record_index"]).all() for b in off)


@pytest.mark.parametrize("kw, needle", [
    (dict(cross_clip_prob=0.5), "needs identities="),
    (dict(cross_clip_prob=1.5, identities=[0]), "cross_clip_prob=1.5"),
    (dict(cross_clip_prob=0.5, identities=[0, 1]), "identities= lists 2 records"),
])
def test_stage1_cross_clip_bad_arguments_are_refused(train, kw, needle):
    if "identities" in kw and len(kw["identities"]) < 2:
        kw["identities"] = [0] * len(train)
    with pytest.raises(ConfigError, match=needle):
        _stage1(train, **kw)


def test_stage2_windows_match_records(train):
    batches = list(_stage2(train, num_epochs=3))
    b = batches[0]
    assert b["rotation"].shape == (4, K + W, 3)
    assert b["mouth"].shape == (4, K + W, 3)
    assert b["scale"].shape == (4, K + W)
    assert b["audio"].shape == (4, (K + W) * 640)
    assert b["history_mask"].shape == (4, K) and b["frame_mask"].shape == (4, K + W)
    assert b["cond_gaze"].shape == (4, 2) and b["cond_distance"].shape == (4,)
    assert "frames" not in b
    records = [train[i] for i in range(len(train))]
    saw_padding = saw_full_history = False
    for ex in _examples(batches):
        rec = records[int(ex["record_index"])]
        start = int(ex["start"])
        assert 0 <= start <= T - W
        assert int(ex["emotion"]) == int(rec["emotion"])
        assert int(ex["identity"]) == int(rec["identity"])
        for pos in range(K + W):
            t = start - K + pos
            real = t >= 0
            assert bool(ex["frame_mask"][pos]) == real
            if pos < K:
                assert bool(ex["history_mask"][pos]) == real
            for f in pipelines.STAGE2_FIELDS:
                if real:
                    np.testing.assert_array_equal(ex[f][pos], rec[f][t], err_msg=f)
                else:
                    assert not np.any(ex[f][pos]), f  # zero padding
            chunk = ex["audio"][pos * 640:(pos + 1) * 640]
            if real:
                np.testing.assert_array_equal(chunk, rec["audio"][t * 640:(t + 1) * 640])
            else:
                assert not np.any(chunk)
        np.testing.assert_allclose(ex["cond_gaze"], rec["gaze"][start:start + W].mean(0), rtol=1e-5)
        np.testing.assert_allclose(ex["cond_distance"], rec["distance"][start:start + W].mean(),
                                   rtol=1e-5)
        saw_padding |= not ex["history_mask"].all()
        saw_full_history |= bool(ex["history_mask"].all())
    assert saw_padding and saw_full_history  # both cases were exercised


def test_stage2_short_clip_pads_window_end(train):
    ex = _examples(_take(_stage2(train, window=T + 3, history=2, fields=("blink",),
                                 condition_fields=(), clip_fields=()), 1))
    for e in ex:
        assert int(e["start"]) == 0
        np.testing.assert_array_equal(e["frame_mask"], [False] * 2 + [True] * T + [False] * 3)
        rec = train[int(e["record_index"])]
        np.testing.assert_array_equal(e["blink"][2:2 + T], rec["blink"])
        assert not e["blink"][2 + T:].any() and not e["audio"][(2 + T) * 640:].any()


@pytest.mark.parametrize("make", [_stage1, _stage2], ids=["stage1", "stage2"])
def test_iterator_state_resumes_mid_epoch(train, make):
    it = iter(make(train, batch_size=2))
    _take(it, 3)  # 3 of 4 batches of epoch 0
    state = it.get_state()
    expected = _take(it, 3)  # crosses into epoch 1
    fresh = iter(make(train, batch_size=2))
    fresh.set_state(state)
    got = _take(fresh, 3)
    assert all(_equal(x, y) for x, y in zip(expected, got))


def test_iterator_resumes_through_orbax_composite(train, tmp_path):
    it = iter(_stage2(train, batch_size=2))
    _take(it, 5)
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(5, args=ocp.args.Composite(
            state=ocp.args.StandardSave(params),
            data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 3)

    fresh = iter(_stage2(train, batch_size=2))
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        assert mngr.latest_step() == 5
        restored = mngr.restore(5, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(params),
            data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    np.testing.assert_array_equal(restored["state"]["w"], params["w"])
    got = _take(restored["data_iter"], 3)
    assert all(_equal(x, y) for x, y in zip(expected, got))


@pytest.mark.parametrize("make", [_stage1, _stage2], ids=["stage1", "stage2"])
def test_process_shards_are_disjoint_and_cover_the_data(train, make):
    shards = []
    for i in range(2):
        batches = list(make(train, batch_size=2, num_epochs=1, shard_index=i, shard_count=2))
        assert len(batches) == len(train) // 4
        shards.append([int(r) for b in batches for r in b["record_index"]])
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(len(train)))
    # A sample's content depends on (seed, epoch, sample), not on the sharding.
    whole = _examples(list(make(train, batch_size=2, num_epochs=1)))
    parts = _examples(list(make(train, batch_size=2, num_epochs=1, shard_index=0, shard_count=2)))
    by_record = {int(e["record_index"]): e for e in whole}
    for e in parts:
        assert _equal(e, by_record[int(e["record_index"])])


def test_epochs_reshuffle_and_finite_epochs_stop(train):
    batches = list(_stage2(train, batch_size=2, num_epochs=2))
    assert len(batches) == 2 * len(train) // 2
    order = [int(r) for b in batches for r in b["record_index"]]
    first, second = order[:len(train)], order[len(train):]
    assert sorted(first) == sorted(second) == list(range(len(train)))
    assert first != second


def _clip_bytes(train) -> int:
    return pipelines.DecodedClipCache.size(pipelines.DecodedClipCache.load(train[0]))


@pytest.mark.parametrize("clips", [100, 3], ids=["all_fit", "evicting"])
def test_stage1_clip_cache_gives_the_same_batches(train, clips):
    """The decoded-clip cache changes the host's work, not the data: over two epochs, with
    four read threads, cross-clip drivers and a budget that holds every clip or only three
    (so clips are dropped and decoded again), the batches equal the uncached pipeline's."""
    ids = pipelines.record_identities(train)
    kw = dict(identities=ids, cross_clip_prob=0.5, num_epochs=2, read_threads=4)
    ref = list(_stage1(train, **kw))
    budget_mb = clips * _clip_bytes(train) / 2**20
    ds = pipelines.stage1_dataset(train, batch_size=4, seed=0, cache_mb=budget_mb, **kw)
    got = list(ds)
    assert len(got) == len(ref) == 2 * len(train) // 4
    assert all(_equal(x, y) for x, y in zip(ref, got))
    # The transform's cache (reached through a fresh example transform of the same budget).
    tr = pipelines.Stage1Example(train, identities=ids, cross_clip_prob=0.5, cache_mb=budget_mb)
    rng = np.random.default_rng(0)
    examples = [tr.random_map(g, rng) for g in range(4 * len(train))]
    cache = tr.cache
    assert cache.nbytes <= cache.budget
    assert len(cache) == min(clips, len(train))
    assert cache.hits > 0 and cache.misses >= len(cache)
    if clips >= len(train):
        assert cache.misses == len(train)  # every clip read and decoded once
    else:
        assert cache.misses > len(train)  # dropped clips were read again
    frames = [builders.decode_frames(train[i]["frames"]) for i in range(len(train))]
    for e in examples:
        np.testing.assert_array_equal(e["source"], frames[int(e["record_index"])][
            int(e["source_frame"])])
        np.testing.assert_array_equal(e["other"], frames[int(e["other_record_index"])][
            int(e["other_frame"])])


def test_stage1_clip_cache_budget_edges(train, caplog):
    # A budget under one clip caches nothing (and says the clips need more).
    with caplog.at_level("WARNING", logger="vasa_jax.data.pipelines"):
        tr = pipelines.Stage1Example(train, cache_mb=0.5 * _clip_bytes(train) / 2**20)
    assert "Raise cache_mb" in caplog.text
    rng = np.random.default_rng(1)
    for g in range(6):
        tr.random_map(g, rng)
    assert len(tr.cache) == 0 and tr.cache.nbytes == 0 and tr.cache.misses >= 6
    # Pickled for an mp_prefetch worker: the budget travels, the cached clips do not.
    import pickle

    full = pipelines.Stage1Example(train, cache_mb=64)
    full.random_map(0, np.random.default_rng(0))
    assert len(full.cache) >= 1
    clone = pickle.loads(pickle.dumps(full))
    assert clone.cache.budget == full.cache.budget and len(clone.cache) == 0
    assert clone.cache.nbytes == 0
    for bad in (-1, float("nan"), "1GB", True):
        with pytest.raises(ConfigError, match="cache_mb="):
            pipelines.Stage1Example(train, cache_mb=bad)


@pytest.mark.parametrize("cache_mb", [0, 16], ids=["uncached", "clip_cache"])
def test_mp_prefetch_matches_in_process(train, cache_mb):
    ref = list(_stage1(train, batch_size=2, num_epochs=1))
    it = iter(_stage1(train, batch_size=2, num_epochs=1, mp_prefetch=1, cache_mb=cache_mb))
    try:
        got = [{k: np.array(v) for k, v in b.items()} for b in it]
    finally:
        it.close()
    assert len(got) == len(ref)
    assert all(_equal(x, y) for x, y in zip(ref, got))


def test_bad_arguments_raise_config_error(train):
    with pytest.raises(ConfigError, match="batch_size"):
        _stage1(train, batch_size=len(train) + 1)
    with pytest.raises(ConfigError, match="shard_index"):
        _stage2(train, shard_index=2, shard_count=2)
    with pytest.raises(ConfigError, match="window"):
        _stage2(train, window=0)
    with pytest.raises(ConfigError, match="seed"):
        _stage2(train, seed=-1)


def test_images_to_float_range():
    x = np.array([0, 255, 128], np.uint8)
    y = pipelines.images_to_float(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)


def test_stage2_is_generic_over_latent_records():
    # A latent data set: per-frame codes + per-frame audio features, no frames, no raw audio.
    rng = np.random.default_rng(0)
    records = [{"z": rng.normal(size=(9, 5)).astype(np.float32),
                "audio_feat": rng.normal(size=(9, 7)).astype(np.float32),
                "gaze": rng.normal(size=(9, 2)).astype(np.float32),
                "emotion": np.int64(i % 3)} for i in range(6)]
    ds = pipelines.stage2_dataset(records, window=3, history=2, batch_size=3, seed=1,
                                  fields=("z", "audio_feat"), audio_field=None,
                                  condition_fields=("gaze",), clip_fields=("emotion",))
    for ex in _examples(list(itertools.islice(iter(ds), 4))):
        rec = records[int(ex["record_index"])]
        s = int(ex["start"])
        assert ex["z"].shape == (5, 5) and ex["audio_feat"].shape == (5, 7)
        lo = s - 2
        for pos in range(5):
            if lo + pos >= 0:
                np.testing.assert_array_equal(ex["z"][pos], rec["z"][lo + pos])
            else:
                assert not ex["z"][pos].any()
        assert int(ex["emotion"]) == int(rec["emotion"])
        assert "audio" not in ex


def test_stage1_batch_to_global_arrays(train, devices):
    from vasa_jax import sharding

    mesh = sharding.make_mesh(data=4, fsdp=2)
    local = _take(_stage1(train, batch_size=8, seed=5), 1)[0]
    glob = pipelines.global_batch(local, mesh)
    assert glob.keys() == local.keys()
    for k in local:
        np.testing.assert_array_equal(np.asarray(glob[k]), local[k], err_msg=k)
    assert glob["source"].shape == (8, 64, 64, 3)
    assert glob["source"].addressable_shards[0].data.shape == (1, 64, 64, 3)


def test_stage1_derived_mouth_geometry_follows_each_frames_truth(train):
    """factors= may name "mouth_geometry", which the records do not store: each role's value is
    the drawn mouth's (log half-width, half-opening) for that frame's identity, emotion and
    mouth factors, recomputed here from the renderer's own `mouth_shape`."""
    from vasa_jax.data import synthtalk
    from vasa_jax.data.synthtalk.render import mouth_shape

    factors = ["mouth", "mouth_geometry"]
    ex = _examples(_take(_stage1(train, factors=factors), 2))
    seen = set()
    for e in ex:
        for role, rec_key in (("source", "record_index"), ("driver", "driver_record_index"),
                              ("other", "other_record_index")):
            rec = train[int(e[rec_key])]
            t = int(e[f"{role}_frame"])
            half_w, half_open = mouth_shape(
                synthtalk.sample_identity(int(rec["identity"])), np.asarray(rec["mouth"])[t],
                synthtalk.EMOTIONS[int(rec["emotion"])])
            got = e[f"{role}_mouth_geometry"]
            assert got.shape == (2,) and got.dtype == np.float32
            np.testing.assert_allclose(got, [np.log(half_w), half_open], rtol=1e-6, atol=1e-7)
            seen.add(round(float(got[0]), 4))
    assert len(seen) > 3  # it varies with the frame, not one constant


def test_stage1_derived_emotion_onehot_is_each_frames_own_clip(train):
    """"emotion_onehot" (loss.emotion's target) is the one-hot of the emotion of the clip each
    role's frame comes from: a driver drawn from the identity's other clip carries that clip's
    label, not the source's."""
    from vasa_jax.data import synthtalk

    identities = pipelines.record_identities(train)
    ex = _examples(_take(_stage1(train, factors=["emotion_onehot"], identities=identities,
                                 cross_clip_prob=1.0), 4))
    crossed = 0
    for e in ex:
        for role, rec_key in (("source", "record_index"), ("driver", "driver_record_index"),
                              ("other", "other_record_index")):
            got = e[f"{role}_emotion_onehot"]
            assert got.shape == (len(synthtalk.EMOTIONS),) and got.dtype == np.float32
            want = np.eye(len(synthtalk.EMOTIONS))[int(train[int(e[rec_key])]["emotion"])]
            np.testing.assert_array_equal(got, want, err_msg=role)
        crossed += int(e["driver_record_index"] != e["record_index"])
    assert crossed > 0  # some drivers did come from the other clip


def test_stage1_derived_mouth_geometry_needs_synthtalk_records(train):
    """Records without the fields it is computed from (real video) are refused at build time."""

    class NoEmotion:
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return {k: v for k, v in train[i].items() if k != "emotion"}

    with pytest.raises(ConfigError, match="mouth_geometry factor needs SynthTalk records.*emotion"):
        pipelines.stage1_dataset(NoEmotion(), batch_size=2, seed=0,
                                 factors=["mouth", "mouth_geometry"])
