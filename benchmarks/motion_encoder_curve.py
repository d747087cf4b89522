"""How far does stage 1's supervision alone take the motion encoder, against training time?
A learning curve for issue 3's disentanglement targets (rotation R² ≥ 0.95, mouth R² ≥ 0.9).

    python benchmarks/motion_encoder_curve.py --config configs/face_latent.py:tiny_guided \
        --data-dir /tmp/s17/data128 --minutes 5,15,30 --held-out 64 --out curve.json

Trains the config's motion encoder by itself — no appearance or identity encoder, no warps, no
decoder — on the supervised motion losses the config turns on (head_pose, head_position,
expression, with their weights, over source, driver and, with supervise_other, the other
identity's frame: the trainer's own `motion_terms`), with the config's batch, learning rate
(after a 100-step warm-up, held constant: a 30-minute tiny_guided run stops at ~55% of its
cosine schedule) and Adam b1. At each checkpoint in `--minutes` (training time, the probes'
time excluded; or `--steps`, for comparing encoders of different cost step for step) it fits the stage-1 evaluation's ridge probes on the train identities' codes and
scores R² on `--held-out` held-out identities, as `python -m vasa_jax.eval.face_latent` does.
One more probe, `mouth_geometry`, reads z_dyn → what the frame shows of the mouth: the log of
its half-width and its half-opening in head units (`mouth_probe_ceiling.mouth_geometry`). High
there and low on the factors means the encoder measures the mouth but one frame cannot tell
the factors apart (the person's own mouth width is in the half-width); low there means the
measurement itself falls short.

A step here costs ~40% of a full stage-1 step (the 128² motion-encoder pass is the largest part
of one), so at equal wall-clock the encoder sees ~2.3× the supervised frames it sees in the
full trainer: the curve is an optimistic bound on what the 30-minute run's probes can read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import _machine


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/face_latent.py:tiny_guided")
    ap.add_argument("--data-dir", required=True, help="where SynthTalk is (or will be) rendered")
    ap.add_argument("--minutes", default="5,15,30",
                    help="comma-separated training minutes at which to probe")
    ap.add_argument("--steps", default="",
                    help="comma-separated step counts at which to probe, instead of --minutes")
    ap.add_argument("--held-out", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set model.motion_stem_stride=4 "
                         "(the value is read as a Python literal; repeatable)")
    ap.add_argument("--color-jitter", default="", metavar="GAIN,BIAS,GRAY",
                    help="photometric jitter of every training frame the encoder reads (not the "
                         "probed frames): per-channel gain in 1±GAIN, offset in ±BIAS (on 0…1 "
                         "pixels), grey with probability GRAY; e.g. 0.3,0.15,0.2")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    by_steps = bool(args.steps)
    flag, raw = ("--steps", args.steps) if by_steps else ("--minutes", args.minutes)
    try:
        targets = sorted((int if by_steps else float)(m) for m in raw.split(","))
    except ValueError:
        ap.error(f"{flag}={raw!r} is invalid: use comma-separated "
                 f"{'whole numbers, e.g. 500,1000' if by_steps else 'numbers, e.g. 5,15'}")
    if not targets or targets[0] <= 0 or args.held_out < 1:
        ap.error(f"{flag} must be positive and --held-out at least 1")
    try:
        jit_gain, jit_bias, jit_gray = (map(float, args.color_jitter.split(","))
                                        if args.color_jitter else (0.0, 0.0, 0.0))
        assert 0 <= jit_gain < 1 and 0 <= jit_bias < 1 and 0 <= jit_gray <= 1
    except (ValueError, AssertionError):
        ap.error(f"--color-jitter={args.color_jitter!r} is invalid: use GAIN,BIAS,GRAY with "
                 "GAIN and BIAS in [0, 1) and GRAY in [0, 1], e.g. 0.3,0.15,0.2")

    from mouth_probe_ceiling import mouth_geometry
    from vasa_jax import losses
    from vasa_jax.config_util import load_config
    from vasa_jax.errors import ConfigError
    from vasa_jax.data import builders, pipelines
    from vasa_jax.eval.face_latent import _batched, _load_split, probe_accuracy, probe_r2
    from vasa_jax.models.face import build_model
    from vasa_jax.train import augment
    from vasa_jax.train.face_latent import (MOTION_LOSSES, _to_float, augment_mirror_prob,
                                            check_motion_losses, motion_batch_keys, motion_terms,
                                            stage1_factors, supervises_other)

    try:  # --set goes through the trainers' own --config.FIELD=VALUE parser and checks
        config = load_config(args.config, [f"config.{item}" for item in args.set])
        mirror_prob = augment_mirror_prob(config)  # the trainer's own check
    except ConfigError as err:
        ap.error(f"{err} (--config {args.config!r}, --set {args.set})")
    variant = args.config.partition(":")[2] or "default"
    weights = {k: float(v) for k, v in config.loss.items()
               if k in MOTION_LOSSES and v > 0}
    if not weights:
        ap.error(f"{args.config} turns on no motion loss ({', '.join(MOTION_LOSSES)})")
    st = config.data.synthtalk.to_dict()
    train_src = builders.prepare_synthtalk(args.data_dir, **st)["train"]
    check_motion_losses(config, train_src[0])
    test_src = builders.prepare_synthtalk(
        args.data_dir, **dict(st, num_train_identities=1, num_test_identities=args.held_out))["test"]
    roles = ("source", "driver", "other") if supervises_other(config) else ("source", "driver")
    keys = [*roles, *motion_batch_keys(config)]
    cross_clip = float(config.data.get("cross_clip_prob", 0.0))
    identities = pipelines.record_identities(train_src) if cross_clip > 0 else None
    data = iter(pipelines.stage1_dataset(train_src, batch_size=config.batch_size, seed=args.seed,
                                         identities=identities, cross_clip_prob=cross_clip,
                                         factors=stage1_factors(config, train_src[0]),
                                         cache_mb=config.data.get("cache_mb", 0.0)))

    motion = build_model(config.model, nnx.Rngs(args.seed)).motion
    graphdef, params, rest = nnx.split(motion, nnx.Param, ...)
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adam(optax.warmup_constant_schedule(0.0, config.lr, 100),
                                b1=config.adam_b1))
    opt = tx.init(params)

    def jitter(x, key):
        """x in [-1, 1]: per-frame channel gains and offsets, sometimes grey (colour carries no
        pose or expression on SynthTalk, only who the person is)."""
        if not (jit_gain or jit_bias or jit_gray):
            return x
        kg, kb, kgr = jax.random.split(key, 3)
        b = x.shape[0]
        gain = jax.random.uniform(kg, (b, 1, 1, 3), minval=1 - jit_gain, maxval=1 + jit_gain)
        bias = jax.random.uniform(kb, (b, 1, 1, 3), minval=-jit_bias, maxval=jit_bias)
        y = (x + 1.0) * 0.5
        grey = jax.random.bernoulli(kgr, jit_gray, (b, 1, 1, 1))
        y = jnp.where(grey, jnp.broadcast_to(jnp.mean(y, -1, keepdims=True), y.shape), y)
        return jnp.clip(y * gain + bias, 0.0, 1.0) * 2.0 - 1.0

    def loss_fn(p, batch, key):
        enc = nnx.merge(graphdef, p, rest)
        coded = {}
        for i, r in enumerate(roles):
            frames = jitter(_to_float(batch[r]), jax.random.fold_in(key, i))
            z_pose, z_dyn, kp = enc(frames, return_keypoints=True)
            coded[r] = dict(z_pose=z_pose, z_dyn=z_dyn, keypoints=kp)
        terms = motion_terms(config, coded, batch)
        return losses.total_generator_loss(terms, weights)[0], terms


    @jax.jit
    def step(p, o, batch, key):
        if mirror_prob > 0:  # the trainer's own augmentation (--set augment_mirror_prob=P)
            batch = augment.mirror(batch, jax.random.fold_in(key, 0x3177), mirror_prob)
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, key)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss, terms

    @jax.jit
    def codes(p, frames):
        z_pose, z_dyn = nnx.merge(graphdef, p, rest)(_to_float(frames))
        return dict(z_pose=z_pose, z_dyn=z_dyn)

    train_clips, test_clips = _load_split(train_src), _load_split(test_src)
    for clips in (train_clips, test_clips):  # per-frame (log half-width, half-opening)
        for clip in clips:
            clip["mouth_geometry"] = mouth_geometry([clip])[0][:, :2]
    labels = [np.concatenate([np.full(len(c["frames"]), int(c["emotion"])) for c in clips])
              for clips in (train_clips, test_clips)]  # per frame, for the emotion probe
    probes = {"rotation": ("z_pose", "rotation"), "mouth": ("z_dyn", "mouth"),
              "blink": ("z_dyn", "blink"), "gaze": ("z_dyn", "eye_gaze"),
              "mouth_geometry": ("z_dyn", "mouth_geometry")}

    def probe(p) -> dict:
        def encode(clips):
            return [_batched(lambda f: codes(p, f), c["frames"]) for c in clips]

        tr, te = encode(train_clips), encode(test_clips)
        out = {}
        for name, (code, field) in probes.items():
            r = probe_r2(np.concatenate([c[code] for c in tr]),
                         np.concatenate([c[field] for c in train_clips]),
                         np.concatenate([c[code] for c in te]),
                         np.concatenate([c[field] for c in test_clips]))
            out[f"{name}_r2"] = round(r["r2"], 4)
            out[f"{name}_r2_per_dim"] = [round(v, 4) for v in r["r2_per_dim"]]
        # The clip's emotion from z_dyn: the evaluation's linear classifier (chance: the most
        # common label's share of the test frames).
        out["emotion_accuracy"] = round(probe_accuracy(
            np.concatenate([c["z_dyn"] for c in tr]), labels[0],
            np.concatenate([c["z_dyn"] for c in te]), labels[1]), 4)
        out["emotion_chance"] = round(float(np.bincount(labels[1]).max() / len(labels[1])), 4)
        return out

    points, n, trained_s = [], 0, 0.0
    jitter_key = jax.random.key(args.seed + 1)
    for target in targets:
        t0 = time.perf_counter()
        while (n < target) if by_steps else (trained_s + (time.perf_counter() - t0) < target * 60):
            batch = {k: jnp.asarray(v) for k, v in next(data).items() if k in keys}
            params, opt, loss, terms = step(params, opt, batch,
                                            jax.random.fold_in(jitter_key, n))
            n += 1
            if n % 500 == 0:
                host = {k: round(float(v), 4) for k, v in jax.device_get(terms).items()}
                print(f"step {n}: loss {float(loss):.4f} {host}", flush=True)
        jax.block_until_ready(params)
        trained_s += time.perf_counter() - t0
        point = dict(minutes=round(trained_s / 60, 2), steps=n,
                     steps_per_s=round(n / trained_s, 3), **probe(params))
        print(json.dumps(point), flush=True)
        points.append(point)

    result = dict(
        benchmark="motion_encoder_curve", config=args.config, variant=variant, overrides=args.set,
        color_jitter=dict(gain=jit_gain, bias=jit_bias, grey_prob=jit_gray),
        data=dict(st, held_out_identities=args.held_out), seed=args.seed,
        batch_pairs=config.batch_size, frames_per_step=config.batch_size * len(roles),
        lr=config.lr, loss_weights=weights, targets=dict(rotation_r2=0.95, mouth_r2=0.9),
        points=points,
        machine=dict(cpu=_machine.cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                     device=str(jax.devices()[0].device_kind), jax=jax.__version__))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
