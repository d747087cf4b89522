"""Face latent model cost: parameters per sub-module and XLA-estimated FLOPs per frame.

    python benchmarks/face_latent_cost.py --config configs/face_latent.py:vox512

Builds the model abstractly (`nnx.eval_shape`, nothing allocated), counts parameters, then
lowers and compiles the jitted `__call__(source, driver)` at batch 1 from ShapeDtypeStructs
(nothing runs) and reads `cost_analysis()["flops"]`. One frame = one driver frame
reconstructed from one source frame: both encoders' work is included. `decode_flops` counts
only the per-frame streaming path (source latents cached, driver motion given).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.models.face import POSE_DIM, build_model, input_size

SUBMODULES = ("appearance", "identity", "motion", "warp_s2c", "warp_c2d", "decoder")


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("face_latent_config", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None), arg or "default"


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def flops_of(fn, *args) -> tuple[float | None, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
        cost = cost[0] if cost else None
    return (float(cost["flops"]) if cost and "flops" in cost else None), seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/face_latent.py:tiny")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-flops", action="store_true", help="parameters only")
    args = ap.parse_args()
    config, variant = load_config(args.config)
    cfg = config.model

    abstract = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = nnx.state(abstract, nnx.Param)
    per_module = {k: count(params[k]) for k in SUBMODULES}
    result = dict(
        variant=variant, config=args.config, model=cfg.to_dict(),
        params=dict(per_module, total=count(params)),
        jax=jax.__version__, backend=jax.default_backend(), machine=platform.machine(), cpu_count=os.cpu_count(),
    )

    if not args.skip_flops:
        s, b = input_size(cfg), 1  # the frames the model reads (model.input_size)
        img = jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32)

        def forward(state, source, driver):
            return nnx.merge(graphdef, state)(source, driver)

        def decode(state, v_app, z_id, zp_s, zd_s, zp_d, zd_d, f_src):
            return nnx.merge(graphdef, state).decode(v_app, z_id, zp_s, zd_s, zp_d, zd_d,
                                                     f_src=f_src)

        vs = cfg.volume_size
        sds = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        # A source skip's cached features (their shape from the model itself), else None.
        f_src = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st).encode(x),
                               state, img).get("f_src")
        f_all, t_all = flops_of(forward, state, img, img)
        f_dec, t_dec = flops_of(decode, state, sds(b, cfg.volume_depth, vs, vs, cfg.volume_channels),
                                sds(b, cfg.id_dim), sds(b, POSE_DIM), sds(b, cfg.dyn_dim),
                                sds(b, POSE_DIM), sds(b, cfg.dyn_dim), f_src)
        result.update(flops_per_frame=f_all, decode_flops_per_frame=f_dec,
                      compile_seconds=dict(forward=round(t_all, 1), decode=round(t_dec, 1)),
                      flops_note="XLA cost_analysis of the compiled batch-1 graph (CPU backend); "
                                 "a multiply-add counts as 2 FLOPs")

    out = pathlib.Path(args.out or f"benchmarks/results/face_latent_cost_{variant}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "model"}, indent=2))


if __name__ == "__main__":
    main()
