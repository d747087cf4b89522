"""Real-video preprocessing and grain read throughput vs. what a tiny stage-1 step consumes.

    python benchmarks/preprocess_throughput.py [--clips 200] [--seconds 2] [--workers 2] \
        [--out benchmarks/results/preprocess_throughput.json]

1. Renders `--clips` SynthTalk clips (64², `--seconds` long, H.264 + AAC mp4, padded to 96×64)
   into a VoxCeleb2-layout tree (`--clips / 2` speakers × 2 videos; 1 in 10 speakers in
   vox2_test_mp4), plus a corrupt file and one without audio.
2. `vasa_jax.data.preprocess.preprocess` with configs/preprocess.py:tiny (64², JPEG) and
   `--workers` processes: files/s, clips/s, frames/s, wall time (and the skipped files).
3. grain read throughput of `pipelines.stage1_dataset` over the result (batch 8; each sample
   decodes 3 JPEG frames: source, driver, other), in-process with 1 and 4 read threads.
4. The stage-1 train step of configs/face_latent.py:tiny on this host's default devices (one
   CPU device unless XLA_FLAGS says otherwise), median of 10 steps after compiling, and the
   frames/s it consumes (batch × 3 / step time), to compare with 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _machine import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def render_tree(root: str, clips: int, seconds: float) -> tuple[float, int]:
    """Renders the tree (files already there are kept: an interrupted render resumes);
    returns (seconds, clips rendered now)."""
    import _video_fixture as vf

    start = time.perf_counter()
    frames = int(round(seconds * 25))
    rendered = 0
    for k in range(clips):
        spk, c = divmod(k, 2)
        part, sub = (("test", "mp4") if spk % 10 == 9 else ("dev", "dev/mp4"))
        path = os.path.join(root, f"vox2_{part}_mp4", sub, f"id{spk:05d}", f"yt{spk}x{c}",
                            "00001.mp4")
        if not os.path.isfile(path):
            vf.render(path, identity=spk, seed=c, frames=frames)
            rendered += 1
    bad = os.path.join(root, "vox2_dev_mp4", "dev", "mp4", "id00000", "ytbad", "00001.mp4")
    os.makedirs(os.path.dirname(bad), exist_ok=True)
    Path(bad).write_bytes(np.random.default_rng(0).bytes(4000))
    vf.render(os.path.join(root, "vox2_dev_mp4", "dev", "mp4", "id00000", "ytmute", "00001.mp4"),
              identity=0, seed=7, frames=frames, audio=False)
    return time.perf_counter() - start, rendered


def grain_throughput(source, threads: int, batches: int = 30) -> dict:
    from vasa_jax.data import pipelines

    ds = pipelines.stage1_dataset(source, batch_size=8, seed=0, read_threads=threads)
    it = iter(ds)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    pairs = batches * 8 / dt
    return dict(read_threads=threads, pairs_per_s=pairs, frames_per_s=3 * pairs,
                first_batch_s=first, cpu_s_per_frame=cpu / (3 * batches * 8))


def train_step_rate(steps: int = 10) -> dict:
    import jax

    from vasa_jax import sharding
    from vasa_jax.config_util import load_config
    from vasa_jax.models.vgg import make_perceptual
    from vasa_jax.train import face_latent

    cfg = load_config(f"{ROOT / 'configs' / 'face_latent.py'}:tiny")
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    graphdefs, init, _, shardings = face_latent.build_state_fns(cfg, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    train_step, _ = face_latent.make_steps(cfg, graphdefs, make_perceptual(None))
    step = jax.jit(train_step, donate_argnums=0)
    rng = np.random.default_rng(0)
    b, s = cfg.batch_size, cfg.model.image_size
    batch = {k: rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8)
             for k in ("source", "driver", "other")}
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    c0 = time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    cpu_per_step = (time.process_time() - c0) / steps
    med = float(np.median(times))
    return dict(config="configs/face_latent.py:tiny (GAN, feature matching, l_consist on)",
                batch_size=b, image_size=s, devices=1, compile_s=compile_s,
                step_s_median=med, steps_per_s=1.0 / med, frames_per_s=3 * b / med,
                cpu_s_per_step=cpu_per_step, cpu_s_per_frame=cpu_per_step / (3 * b))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "preprocess_throughput.json"))
    parser.add_argument("--keep", default="", help="keep the tree and data set in this folder")
    args = parser.parse_args()

    import grain
    import jax
    import tensorflow_datasets as tfds

    from vasa_jax.config_util import load_config
    from vasa_jax.data import preprocess

    work = args.keep or tempfile.mkdtemp(prefix="vasa_pre_bench_")
    tree, data = os.path.join(work, "tree"), os.path.join(work, "data")
    result = dict(machine=dict(cpu=cpu_model(), cores=os.cpu_count(),
                               python=platform.python_version(), jax=jax.__version__,
                               grain=grain.__version__, tfds=tfds.__version__,
                               load_average_at_start=os.getloadavg()))
    try:
        render_s, rendered = render_tree(tree, args.clips, args.seconds)
        result["input"] = dict(clips=args.clips, seconds_per_clip=args.seconds,
                               resolution="96x64 (64² face, centre-cropped)",
                               extra_bad_files=2, render_s=render_s, rendered_now=rendered)
        cfg = load_config(f"{ROOT / 'configs' / 'preprocess.py'}:tiny")
        cfg.shard_size = 8
        summary = preprocess.preprocess(cfg, tree, data, num_workers=args.workers,
                                        progress=False)
        written = sum(summary["clips"].values())
        result["preprocess"] = dict(
            workers=summary["workers"], shard_size=cfg.shard_size, files=summary["files"],
            clips_written=summary["clips"], skipped_by_reason=summary["skipped_by_reason"],
            wall_s=summary["seconds"], clips_per_s=written / summary["seconds"],
            files_per_s=summary["files"] / summary["seconds"],
            frames_per_s=summary["frames"] / summary["seconds"],
            worker_cpu_s=summary["worker_cpu_seconds"],
            worker_cpu_s_per_clip=summary["worker_cpu_seconds"] / max(written, 1),
            note="wall time includes starting the spawned workers (imports); worker CPU "
                 "seconds exclude the imports and are not inflated by other jobs' load")
        train = preprocess.open_prepared(summary["path"])["train"]
        result["grain_stage1"] = [grain_throughput(train, t) for t in (1, 4)]
        result["train_step"] = train_step_rate()
        need = result["train_step"]["frames_per_s"]
        best = max(g["frames_per_s"] for g in result["grain_stage1"])
        result["read_over_consumed_wall"] = best / need
        # CPU cost ratio: decoding a frame vs. the train step's CPU per frame it consumes.
        result["train_cpu_over_read_cpu_per_frame"] = (
            result["train_step"]["cpu_s_per_frame"]
            / min(g["cpu_s_per_frame"] for g in result["grain_stage1"]))
        result["load_average_at_end"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
