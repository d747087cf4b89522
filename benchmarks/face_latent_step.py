"""Stage-1 train-step time: the trainer's own jitted step on real SynthTalk batches.

    python benchmarks/face_latent_step.py --config configs/face_latent.py:tiny_guided \
        --generic --out benchmarks/results/face_latent_step_cpu.json

Builds the state, mesh and `train_step` exactly as `python -m vasa_jax.train.face_latent`
does (same config, shardings and donation), takes four batches of the config's SynthTalk data
(`--data-dir`; by default four identities rendered into a temporary folder), and times
`--steps` steps after `--warmup` ones. Batch contents do not change the work, so a small
render is enough.

`--generic` also times the step with the three computations session 26 replaced put back as
they were: XLA's own 3D convolution for every 3D conv (instead of `layers.conv3d_as_2d`),
MS-SSIM's Gaussian filter as two one-channel convolutions (instead of banded matrix products)
and the source skip read by a depth-1 `trilinear_sample` (instead of `bilinear_sample`). The
arms alternate (fast, generic, fast, generic, ...) so a drift in the machine's speed reaches
both; each arm reports the median of its rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import _machine


def _generic_filter_valid(x, window):
    """MS-SSIM's separable 'valid' Gaussian filter as two one-channel convolutions."""
    b, h, w, c = x.shape
    k = window.shape[0]
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(b * c, h, w, 1)
    g = jnp.asarray(window, x.dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, g.reshape(k, 1, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, k, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn)
    return jnp.transpose(x.reshape(b, c, h - k + 1, w - k + 1), (0, 2, 3, 1))


def _generic_sample_2d(image, xy, padding_mode="zeros"):
    """The source skip's 2D read as a depth-1 trilinear sample (8 corners, 4 of them masked)."""
    from vasa_jax.models.warp import trilinear_sample

    grid = jnp.concatenate([xy, jnp.zeros_like(xy[..., :1])], axis=-1)[:, None]
    return trilinear_sample(image[:, None], grid, padding_mode=padding_mode)[:, 0]


def build(config, sources):
    """(jitted train_step, state, batches) as the trainer builds them."""
    from vasa_jax.data import pipelines
    from vasa_jax.models.vgg import make_perceptual
    from vasa_jax.train import loop
    from vasa_jax.train.face_latent import build_state_fns, make_steps, motion_batch_keys

    mesh, batch_sharding, local_batch = loop.setup_mesh(config)
    cross_clip = float(config.data.get("cross_clip_prob", 0.0))
    identities = pipelines.record_identities(sources) if cross_clip > 0 else None
    data = iter(pipelines.stage1_dataset(sources, batch_size=local_batch, seed=config.seed,
                                         identities=identities, cross_clip_prob=cross_clip))
    keys = ["source", "driver", "other", *motion_batch_keys(config)]
    batches = [pipelines.global_batch({k: b[k] for k in keys}, mesh)
               for b in (next(data) for _ in range(4))]
    graphdefs, init, _, shardings = build_state_fns(config, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
    step, _ = make_steps(config, graphdefs, make_perceptual(config.loss_vgg_weights or None))
    step = jax.jit(step, in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, None), donate_argnums=0)
    return step, state, batches


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/face_latent.py:tiny_guided")
    ap.add_argument("--data-dir", default="",
                    help="SynthTalk folder for the config (default: 4 identities rendered "
                         "into a temporary folder)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--generic", action="store_true",
                    help="also time the step with session 26's replaced computations")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (as --config.KEY=VALUE in the trainer)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps and --rounds must be at least 1 and --warmup at least 0")

    from vasa_jax.config_util import load_config
    from vasa_jax.data import builders
    from vasa_jax.errors import ConfigError
    from vasa_jax.models import face, layers, vgg
    from vasa_jax.models.face import input_size

    try:
        config = load_config(args.config, [f"config.{item}" for item in args.set])
    except ConfigError as err:
        ap.error(f"{err} (--config {args.config!r}, --set {args.set})")
    size = input_size(config.model)
    tmp = None
    data_dir = args.data_dir
    synth = dict(config.data.synthtalk.to_dict(), resolution=size)
    if not data_dir:
        tmp = tempfile.TemporaryDirectory(prefix="face_latent_step_")
        data_dir = tmp.name
        synth.update(num_train_identities=4, num_test_identities=1)
    sources = builders.prepare_synthtalk(data_dir, **synth)["train"]

    arms = {"fast": build(config, sources)}
    if args.generic:
        saved = layers.conv3d_as_2d, vgg._filter_valid, face.sample_2d
        layers.conv3d_as_2d = jax.lax.conv_general_dilated  # read by layers.conv at build
        vgg._filter_valid, face.sample_2d = _generic_filter_valid, _generic_sample_2d
        try:
            arms["generic"] = build(config, sources)
        finally:
            layers.conv3d_as_2d, vgg._filter_valid, face.sample_2d = saved

    results = {name: dict(compile_s=None, rounds_ms=[]) for name in arms}
    states = {}
    for name, (step, state, batches) in arms.items():
        t0 = time.perf_counter()
        state, metrics = step(state, batches[0])
        jax.block_until_ready(metrics)
        results[name]["compile_s"] = round(time.perf_counter() - t0, 1)
        for i in range(args.warmup):
            state, metrics = step(state, batches[i % 4])
        jax.block_until_ready(metrics)
        states[name] = state
    for _ in range(args.rounds):
        for name, (step, _, batches) in arms.items():
            state = states[name]
            t0 = time.perf_counter()
            for i in range(args.steps):
                state, metrics = step(state, batches[i % 4])
            jax.block_until_ready(metrics)
            results[name]["rounds_ms"].append(
                round((time.perf_counter() - t0) / args.steps * 1000, 1))
            states[name] = state
            if not np.isfinite(float(metrics["loss"])):
                raise SystemExit(f"arm {name}: the loss is not finite")
    for r in results.values():
        r["ms_per_step"] = statistics.median(r["rounds_ms"])
        r["steps_per_s"] = round(1000 / r["ms_per_step"], 3)
    out = dict(
        config=args.config, overrides=args.set, batch_size=int(config.batch_size),
        input_size=size, steps_per_round=args.steps, rounds=args.rounds, arms=results,
        machine=dict(cpu=_machine.cpu_model(), cores=os.cpu_count(),
                     backend=jax.default_backend(), devices=jax.device_count(),
                     device_kind=jax.devices()[0].device_kind, python=platform.python_version(),
                     jax=jax.__version__))
    if "generic" in results:
        out["speedup"] = round(results["generic"]["ms_per_step"]
                               / results["fast"]["ms_per_step"], 3)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
