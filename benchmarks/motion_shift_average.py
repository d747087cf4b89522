"""Is the motion encoder's mouth error noise that averaging removes? Encodes held-out and
training frames at one-pixel shifts and fits the stage-1 evaluation's ridge probes
(z_dyn → mouth factors) on the code averaged over the first 1, 5 and all shifts.

    python benchmarks/motion_shift_average.py --workdir RUN --data-dir D \
        --train-clips 1024 --held-out 64 --out shifts.json

RUN is a trained stage-1 workdir (its EMA weights); D holds its SynthTalk data. Shifts are
whole pixels of the frame the motion encoder reads, with the border edge-padded; the first is
no shift, so the `1` row is the evaluation's own probe on the training clips taken here
(evenly spaced, `--train-clips` of them). If averaging lifts the R² a lot, the encoder's error
is jitter from where the face falls on the pixel grid; if little, it is systematic per face.
The `shift_spread` row gives, per z_dyn component, its standard deviation across the shifts of
a frame over its standard deviation across frames.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="a trained stage-1 workdir")
    ap.add_argument("--data-dir", default="", help="its SynthTalk data (default: the run's own)")
    ap.add_argument("--train-clips", type=int, default=1024,
                    help="training clips the probes are fitted on (evenly spaced)")
    ap.add_argument("--held-out", type=int, default=64, help="held-out identities scored")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.train_clips < 1 or args.held_out < 1:
        ap.error("--train-clips and --held-out must be positive")
    if not os.path.isdir(args.workdir):
        ap.error(f"--workdir {args.workdir} does not exist: give a trained stage-1 workdir")

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vasa_jax.data import builders
    from vasa_jax.eval import face_latent as fl
    from vasa_jax.train.face_latent import restore_generator

    gen, config, step = restore_generator(args.workdir, None, ema=True)
    st = config.data.synthtalk.to_dict()
    data_dir = args.data_dir or config.data.data_dir
    train = builders.prepare_synthtalk(data_dir, **st)["train"]
    test = builders.prepare_synthtalk(
        data_dir, **dict(st, num_train_identities=1, num_test_identities=args.held_out))["test"]
    graphdef, state = nnx.split(gen)

    @jax.jit
    def shifted_codes(state, frames):
        g = nnx.merge(graphdef, state)
        x = frames.astype(jnp.float32) / 127.5 - 1
        h, w = x.shape[1:3]
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        return jnp.stack([g.encode_motion(padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])[1]
                          for dy, dx in SHIFTS])  # [S, T, dyn]

    def encode(source, n):
        codes, mouth = [], []
        for r in np.linspace(0, len(source) - 1, min(n, len(source))).astype(int):
            rec = source[int(r)]
            codes.append(np.asarray(shifted_codes(state, builders.decode_frames(rec["frames"]))))
            mouth.append(np.asarray(rec["mouth"]))
        return np.concatenate(codes, 1), np.concatenate(mouth)

    t = time.perf_counter()
    z_train, m_train = encode(train, args.train_clips)
    z_test, m_test = encode(test, len(test))
    rows = {}
    for k in (1, 5, len(SHIFTS)):
        rows[str(k)] = fl.probe_r2(z_train[:k].mean(0), m_train, z_test[:k].mean(0), m_test)
        print(k, "shifts", json.dumps(rows[str(k)]), flush=True)
    spread = z_test.std(0).mean(0) / (z_test[0].std(0) + 1e-12)
    result = dict(benchmark="motion_shift_average", workdir=os.path.abspath(args.workdir),
                  step=step, train_clips=int(min(args.train_clips, len(train))),
                  test_clips=len(test), shifts=[list(s) for s in SHIFTS],
                  mouth_r2_by_shifts=rows, shift_spread=[float(v) for v in spread],
                  seconds=round(time.perf_counter() - t, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
