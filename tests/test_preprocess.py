"""`vasa-jax preprocess` on real H.264/AAC mp4 trees rendered from SynthTalk.

Checks the output set against what went in (every good clip once, in its split, with its
speaker's identity; the corrupt, truncated and audio-less files skipped with their reasons),
the frames and audio against the SynthTalk truth, that the stage-1 pipeline reads the records
unchanged, resumption after a SIGKILL (finished shards not redone), the folder layout with
segments and a quality threshold, and one-line errors with no output on bad input.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import _video_fixture as vf
from vasa_jax.config_util import load_config
from vasa_jax.data import builders, pipelines, preprocess

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "preprocess.py")


def _config(variant="tiny", **fields):
    cfg = load_config(f"{CONFIG}:{variant}")
    for k, v in fields.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def _records(path):
    sources = preprocess.open_prepared(path)
    return {split: [src[i] for i in range(len(src))] for split, src in sources.items()}


@pytest.fixture(scope="module")
def vox(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vox"))
    return root, vf.vox_tree(root)


@pytest.fixture(scope="module")
def prepared(vox, tmp_path_factory):
    root, _ = vox
    out = str(tmp_path_factory.mktemp("prepared"))
    summary = preprocess.preprocess(_config(), root, out, num_workers=2, progress=False)
    return out, summary


def test_voxceleb2_tree_gives_every_good_clip_once(vox, prepared):
    _, tree = vox
    out, summary = prepared
    recs = _records(summary["path"])
    got = {r["clip_id"].decode(): (split, int(r["identity"]))
           for split, rs in recs.items() for r in rs}
    assert sum(len(rs) for rs in recs.values()) == len(got)  # no clip twice
    assert got == {cid: (split, ident) for cid, (split, ident, _) in tree["good"].items()}
    # The three bad files are skipped, each named with its reason; nothing else is.
    skipped = {path: why for path, why in summary["skipped_files"]}
    assert set(skipped) == set(tree["bad"])
    for path, word in tree["bad"].items():
        assert skipped[path].startswith(word), (path, skipped[path])
    assert summary["clips"] == {"train": 8, "test": 2} and summary["skipped"] == 3
    assert summary["workers"] == 2 and summary["shards_resumed"] == 0
    # Speaker-disjoint splits; identity = the idNNNNN number; SynthTalk's record layout.
    spk = {s: {r["speaker"] for r in rs} for s, rs in recs.items()}
    assert not spk["train"] & spk["test"]
    rec = recs["train"][0]
    assert {"frames", "audio", "identity", "emotion", "clip_seed"} <= set(rec)
    assert int(rec["identity"]) == int(rec["speaker"].decode()[2:])
    assert summary["dataset"].startswith("voxceleb2/r64_jpeg_")
    assert summary["path"] == os.path.join(out, summary["dataset"], "1.0.0")


def test_frames_and_audio_match_what_was_rendered(vox, prepared):
    _, tree = vox
    _, summary = prepared
    for rs in _records(summary["path"]).values():
        for r in rs:
            truth = tree["good"][r["clip_id"].decode()][2]
            frames = builders.decode_frames(r["frames"])
            assert frames.shape == truth["frames"].shape == (25, 64, 64, 3)
            # The centre square of the 96×64 video is exactly the rendered 64² face:
            # H.264 (CRF 18) + JPEG (q95) leave ~30 dB; a one-pixel shift gives < 22 dB.
            mse = np.mean((frames.astype(np.float64) - truth["frames"]) ** 2)
            assert 10 * np.log10(255.0**2 / mse) > 27.0
            shifted = np.mean((frames[:, :, 1:].astype(np.float64)
                               - truth["frames"][:, :, :-1]) ** 2)
            assert mse < 0.5 * shifted
            # 640 samples per frame at 16 kHz, aligned with the source speech (AAC round trip).
            assert r["audio"].shape == (25 * 640,) and r["audio"].dtype == np.float32
            assert np.corrcoef(r["audio"], truth["audio"])[0, 1] > 0.95


def test_stage1_pipeline_reads_real_records_unchanged(prepared):
    _, summary = prepared
    train = preprocess.open_prepared(summary["path"])["train"]
    batch = next(iter(pipelines.stage1_dataset(train, batch_size=4, seed=0)))
    assert batch["source"].shape == batch["driver"].shape == (4, 64, 64, 3)
    assert np.all(batch["identity"] != batch["other_identity"])
    assert not any(k.startswith("source_") and k != "source_frame" for k in batch)  # no factors


def test_builder_open_sources_checks_the_image_size(prepared):
    import ml_collections

    from vasa_jax.errors import ConfigError

    out, summary = prepared
    data = ml_collections.ConfigDict(dict(dataset=summary["dataset"], synthtalk={}))
    sources = builders.open_sources(data, out, image_size=64)
    assert len(sources["train"]) == 8
    with pytest.raises(ConfigError, match="image_size is 128"):
        builders.open_sources(data, out, image_size=128)
    data.dataset = "voxceleb2/nothing_here"
    with pytest.raises(ConfigError, match="vasa-jax preprocess"):
        builders.open_sources(data, out)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vasa_jax.cli", "preprocess", *args],
                          cwd=ROOT, capture_output=True, text=True)


def test_resumes_after_kill_without_redoing_finished_shards(vox, tmp_path):
    root, tree = vox
    out = str(tmp_path / "out")
    args = ["--input", root, "--data-dir", out, "--config", f"{CONFIG}:tiny",
            "--config.shard_size=1", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "vasa_jax.cli", "preprocess", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    done = []
    while proc.poll() is None:
        done = list(Path(out).glob("voxceleb2/*/1.0.0/*.done.json"))
        if len(done) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    data_path = done[0].parent
    assert not (data_path / "dataset_info.json").exists()  # not readable as finished
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in
                data_path.glob("*.done.json")}
    shards = {p.with_name(p.name[:-len(".done.json")]): p.with_name(
        p.name[:-len(".done.json")]).stat().st_mtime_ns for p in finished}
    total = len(tree["good"]) + len(tree["bad"])
    assert 2 <= len(finished) < total
    from vasa_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="unfinished"):
        preprocess.open_prepared(str(data_path))

    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    summary = json.loads((data_path / "summary.json").read_text())
    assert summary["shards_resumed"] == len(finished) and summary["shards"] == total
    for p, (mtime, blob) in finished.items():  # finished shards were not redone
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == blob
    for p, mtime in shards.items():
        assert p.stat().st_mtime_ns == mtime
    assert not list(data_path.glob("*.tmp*"))
    got = sorted(r["clip_id"].decode() for rs in _records(str(data_path)).values() for r in rs)
    assert got == sorted(tree["good"])
    assert "2 test clips" in res.stdout and f"{len(finished)} of {total} shards" in res.stdout


def test_folder_layout_segments_and_quality_threshold(tmp_path):
    root = tmp_path / "videos"
    vf.render(str(root / "alice" / "talk.mkv"), identity=1, seed=0, frames=50)
    vf.render(str(root / "alice" / "day2" / "more.mp4"), identity=1, seed=1, frames=30)
    vf.render(str(root / "bob" / "a.mov"), identity=2, seed=0, frames=25)
    vf.render(str(root / "carol.mp4"), identity=3, seed=0, frames=25)
    (root / "notes.txt").write_text("not a video")
    out = str(tmp_path / "out")
    cfg = _config("folder", resolution=32, clip_seconds=1.0, test_fraction=0.34,
                  image_format="png")
    s = preprocess.preprocess(cfg, str(root), out, num_workers=1, progress=False)
    recs = _records(s["path"])
    ids = sorted(r["clip_id"].decode() for rs in recs.values() for r in rs)
    # 50 frames → two 1 s segments; 30 frames → one (the 5-frame tail is under min_seconds).
    assert ids == ["alice/day2/more.mp4#0", "alice/talk.mkv#0", "alice/talk.mkv#1",
                   "bob/a.mov#0", "carol.mp4#0"]
    spk = {split: {r["speaker"].decode() for r in rs} for split, rs in recs.items()}
    assert spk["train"] and spk["test"] and not spk["train"] & spk["test"]
    assert spk["train"] | spk["test"] == {"alice", "bob", "carol"}
    r = recs["train"][0]
    assert builders.decode_frames(r["frames"]).shape == (25, 32, 32, 3)
    assert r["frames"][0][:8] == b"\x89PNG\r\n\x1a\n"
    # The same tree with a sharpness threshold above every clip's score: all skipped as blurry.
    worst = max(float(r["sharpness"]) for rs in recs.values() for r in rs)
    cfg.quality.min_sharpness = worst + 1.0
    s2 = preprocess.preprocess(cfg, str(root), str(tmp_path / "strict"), num_workers=1,
                               progress=False)
    assert s2["skipped"] == 4 and s2["skipped_by_reason"] == {"blurry": 4}
    assert sum(s2["clips"].values()) == 0


@pytest.mark.parametrize("make_args, needle", [
    (lambda t: ["--input", str(t / "missing")], "input folder not found"),
    (lambda t: ["--input", str(t / "flat")], "neither vox2_dev_mp4 nor vox2_test_mp4"),
    (lambda t: ["--input", str(t / "flat"), "--config.image_format=gif"], "image_format='gif'"),
    (lambda t: ["--input", str(t / "flat"), "--config.aligner=box"], "needs a face detector"),
    (lambda t: ["--input", str(t / "emptyvox")], "holds no idNNNNN"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, make_args, needle):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.mp4").write_bytes(b"")
    (tmp_path / "emptyvox" / "vox2_dev_mp4" / "dev" / "mp4").mkdir(parents=True)
    out = tmp_path / "out"
    err, stdout = io.StringIO(), io.StringIO()
    from vasa_jax import cli

    with redirect_stderr(err), redirect_stdout(stdout):
        code = cli.main(["preprocess", *make_args(tmp_path), "--data-dir", str(out),
                         "--config", f"{CONFIG}:tiny", "--no-progress"])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err.getvalue()
    assert not out.exists()


def test_stage2_latents_from_real_clips_need_and_use_an_estimator(prepared, tmp_path, devices):
    import jax

    from vasa_jax import sharding
    from vasa_jax.checkpoint import Checkpointer
    from vasa_jax.config_util import set_fields
    from vasa_jax.data import latents
    from vasa_jax.errors import ConfigError
    from vasa_jax.train import extract_latents, face_latent, loop

    out, summary = prepared
    face_dir = str(tmp_path / "face")
    cfg = set_fields(load_config(f"{ROOT / 'configs' / 'face_latent.py'}:tiny"),
                     dict(vf.TINIEST_STAGE1, **{"data.data_dir": out,
                                                "data.dataset": summary["dataset"]}))
    loop.save_config(cfg, face_dir)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    _, init, _, shardings = face_latent.build_state_fns(cfg, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    with Checkpointer(os.path.join(face_dir, "checkpoints"), async_save=False) as ckpt:
        ckpt.save(0, state, force=True)
    lat = str(tmp_path / "latents")
    with pytest.raises(ConfigError, match="--conditions=pose_proxy"):
        extract_latents.extract(face_dir, lat, progress=False)  # no ground truth to read
    info = extract_latents.extract(face_dir, lat, progress=False, conditions="pose_proxy")
    assert info["complete"] and info["dataset"] == summary["dataset"]
    assert {s: v["num_clips"] for s, v in info["splits"].items()} == {"train": 8, "test": 2}
    src = latents.LatentSource(lat, "train")
    rec = src[0]
    assert rec["motion"].shape == (25, 7 + cfg.model.dyn_dim)
    # gaze/distance come from the encoder's own head pose; mouth/rotation are unknown (NaN).
    np.testing.assert_allclose(rec["gaze"], rec["motion"][:, :2], rtol=1e-6)
    np.testing.assert_allclose(rec["distance"], np.exp(-rec["motion"][:, 6]), rtol=1e-5)
    assert np.all(np.isnan(rec["mouth"])) and np.all(np.isnan(rec["rotation"]))
    stats = latents.read_stats(lat)  # what the stage-2 trainer normalises with: all finite
    assert all(np.all(np.isfinite(v)) for v in stats.values())


def test_stage1_losses_that_need_ground_truth_refuse_real_data(prepared, tmp_path):
    # Mouth/eye windows need landmarks and the head-pose loss needs rotations; real records have
    # neither, so training must stop at once with a one-line fix instead of a KeyError later.
    from vasa_jax.errors import ConfigError
    from vasa_jax.train import face_latent

    out, summary = prepared
    for variant, match in (("tiny_run", "landmarks"), ("tiny_pose", "head rotations")):
        cfg = load_config(f"configs/face_latent.py:{variant}")
        cfg.data.data_dir = out
        cfg.data.dataset = summary["dataset"]
        if variant == "tiny_pose":
            cfg.loss.update(dict(mouth=0.0, eyes=0.0))
        with pytest.raises(ConfigError, match=match):
            face_latent.train(cfg, str(tmp_path / variant))
        assert not (tmp_path / variant / "checkpoints").exists()


def test_serial_tfds_path_spills_past_the_shuffle_buffer_without_tensorflow(tmp_path,
                                                                           monkeypatch):
    """The builder's own `download_and_prepare` (tfds's serial path, manual_dir = the tree):
    with tfds's in-memory shuffle buffer at 0 bytes every record goes through its bucket files,
    which without TensorFlow failed with "No module named 'tensorflow'"; the records are the
    ones `preprocess()` writes."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import shuffle

    root = str(tmp_path / "tree")
    vf.vox_tree(root, train_speakers=2, clips_per_speaker=1, test_speakers=1, bad_files=False)
    ref_dir = str(tmp_path / "ref")
    preprocess.preprocess(_config(), root, ref_dir, num_workers=1, progress=False)
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    settings = preprocess.Settings.from_config(_config())
    builder = preprocess.make_builder(settings, str(tmp_path / "serial"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    ref = _records(next(Path(ref_dir).glob("voxceleb2/*/*")))
    for split, records in ref.items():
        source = builder.as_data_source(split=split)
        ours = sorted((source[i] for i in range(len(source))), key=lambda r: str(r["clip_id"]))
        theirs = sorted(records, key=lambda r: str(r["clip_id"]))
        assert len(ours) == len(theirs) > 0, split
        for a, b in zip(ours, theirs):
            for key in b:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")
    assert not list((tmp_path / "serial").rglob("bucket_*.tmp"))
