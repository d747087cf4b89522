"""How much of SynthTalk's mouth factors can one frame show? An upper bound for issue 3's
mouth probe (z_dyn → mouth opening, width, rounding; R² on held-out identities).

    python benchmarks/mouth_probe_ceiling.py --data-dir /tmp/vrun/data --out ceiling.json

The renderer draws the mouth from three numbers: its half-width
    a = 0.19 · m_id · (0.72 + 0.45·width) · (1 − 0.35·round) · (1 + 0.08·max(smile, 0)),
its half-opening h = 0.12 · min(1, open + jaw) · (1 + 0.2·round), and the emotion (smile, jaw),
where m_id is the identity's own mouth width (uniform 0.85–1.2). A frame shows (a, h, emotion) at
best; it cannot tell a wide mouth from a wide-mouthed person. This script computes (a, h) exactly
from the records' truth, fits a k-nearest-neighbour regressor (features standardised, k chosen on
the held-out set, which flatters the bound) from (log a, h, emotion one-hot) to the three factors
on the train identities, and scores R² on the held-out identities, as the stage-1 evaluation
does. An encoder that measured the mouth perfectly, at any resolution, could not do better than
this from a single frame; at 64² the half-width is ~3–4 pixels.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def mouth_geometry(records) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 2 + emotions], truth [N, 3]) over every frame of `records`."""
    from vasa_jax.data import synthtalk
    from vasa_jax.data.synthtalk.render import mouth_geometry as drawn

    xs, ys = [], []
    for i in range(len(records)):
        rec = records[i]
        emotion = int(rec["emotion"])
        m = np.asarray(rec["mouth"], np.float64)
        log_a_h = drawn(int(rec["identity"]), m, emotion).astype(np.float64)
        onehot = np.zeros((len(m), len(synthtalk.EMOTIONS)))
        onehot[:, emotion] = 1.0
        xs.append(np.concatenate([log_a_h, onehot], 1))
        ys.append(m)
    return np.concatenate(xs), np.concatenate(ys)


def ceiling(x_train, y_train, x_test, y_test, ks=(5, 10, 20, 50, 100, 200, 400)) -> dict:
    from vasa_jax.eval.face_latent import r2_score

    mean, std = x_train.mean(0), x_train.std(0) + 1e-9
    a, b = (x_train - mean) / std, (x_test - mean) / std
    k_max = max(ks)
    order = np.empty((len(b), k_max), np.int64)
    for i in range(0, len(b), 256):  # 256 test frames at a time: bounded memory at any size
        d = ((b[i:i + 256, None, :] - a[None]) ** 2).sum(-1)
        near = np.argpartition(d, k_max - 1, axis=1)[:, :k_max]
        order[i:i + 256] = np.take_along_axis(
            near, np.argsort(np.take_along_axis(d, near, 1), axis=1), 1)
    per_k = {}
    for k in ks:
        per_k[k] = r2_score(y_test, y_train[order[:, :k]].mean(1))
    best = max(per_k, key=lambda k: per_k[k].mean())
    return dict(k=int(best), r2=float(per_k[best].mean()),
                r2_per_dim=dict(zip(("opening", "width", "rounding"),
                                    (float(v) for v in per_k[best]))),
                by_k={str(k): [float(v) for v in s] for k, s in per_k.items()})


def main():
    from vasa_jax.data import builders

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="where SynthTalk is (or is built)")
    ap.add_argument("--config", default="configs/face_latent.py:tiny_guided",
                    help="stage-1 config whose data.synthtalk sizes to read")
    ap.add_argument("--held-out", type=int, default=0,
                    help="score on this many held-out identities, as `vasa_jax.eval.face_latent "
                         "--held_out N` does (0: the config's own test split)")
    ap.add_argument("--out", default="mouth_probe_ceiling.json")
    args = ap.parse_args()
    if args.held_out < 0:
        ap.error(f"--held-out {args.held_out} is invalid: use 0 (the config's test split) or N > 0")
    from vasa_jax.config_util import load_config

    st = load_config(args.config).data.synthtalk.to_dict()
    sources = builders.prepare_synthtalk(args.data_dir, **st)
    test = sources["test"] if not args.held_out else builders.prepare_synthtalk(
        args.data_dir, **dict(st, num_train_identities=1, num_test_identities=args.held_out))["test"]
    x_tr, y_tr = mouth_geometry(sources["train"])
    x_te, y_te = mouth_geometry(test)
    result = dict(data=dict(st, held_out_identities=args.held_out),
                  train_frames=len(x_tr), test_frames=len(x_te),
                  **ceiling(x_tr, y_tr, x_te, y_te))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("k", "r2", "r2_per_dim")}))


if __name__ == "__main__":
    main()
