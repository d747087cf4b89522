"""What the evaluation networks (SyncNet, the SynthTalk oracle, CAPP) share: their own SynthTalk
identities, clip rendering, and saving/loading (net.json + orbax parameters, no pickle).

Identities. The evaluators train on SynthTalk identities 2_000_000_000 + k and report their own
accuracy on 2_100_000_000 + k: both ranges lie outside every data set `data.builders` writes
(train ids < 10**9, test ids in [10**9, 2·10**9)), so no evaluator has seen the people (or
clips) of the generator's train or test split.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError

EVAL_TRAIN_BASE = 2_000_000_000
EVAL_HELD_OUT_BASE = 2_100_000_000
NET_JSON = "net.json"


def identity_ids(split: str, n: int) -> list[int]:
    """The evaluators' own identities: 'train' or 'held_out' (alias 'test')."""
    base = EVAL_TRAIN_BASE if split == "train" else EVAL_HELD_OUT_BASE
    return [base + k for k in range(int(n))]


def render_clips(split: str, n_clips: int, num_frames: int, resolution: int, seed: int = 0,
                 clips_per_identity: int = 2, render: bool = True, stride: int = 1
                 ) -> list[dict]:
    """n_clips SynthTalk clips of the evaluators' identities (see the module doc): dicts with
    frames uint8 [T, R, R, 3] (absent when render=False), audio [T·640], every factor, identity,
    emotion. stride > 1 renders every stride-th frame of a clip stride× as long (poses spread
    over seconds, as a frame-level estimator's training set needs); such clips have no audio."""
    from vasa_jax.data import synthtalk
    from vasa_jax.data.synthtalk.spec import ClipSpec

    if stride > 1:
        out = []
        for d in render_clips(split, n_clips, num_frames * stride, resolution, seed,
                              clips_per_identity, render=False):
            idx = np.arange(0, num_frames * stride, stride)
            idn = synthtalk.sample_identity(d["identity"])
            _, _, _, factors = synthtalk.sample_factors(ClipSpec(
                identity=d["identity"], seed=d["clip_seed"], num_frames=num_frames * stride,
                resolution=resolution))
            sub = {k: np.asarray(v)[idx] for k, v in factors.items()}
            frames = synthtalk.render_frames(idn, sub, d["emotion"], resolution)
            sub = {k: v for k, v in sub.items() if not k.startswith("_")}
            out.append(dict(sub, frames=frames, audio=None, emotion=d["emotion"],
                            identity=d["identity"], clip=d["clip"], clip_seed=d["clip_seed"]))
        return out

    ids = identity_ids(split, -(-n_clips // clips_per_identity))
    out = []
    for i in range(n_clips):
        ident, c = ids[i // clips_per_identity], i % clips_per_identity
        clip_seed = int(np.random.SeedSequence([seed, ident, c]).generate_state(1)[0]) & 0x7FFFFFFF
        if render:
            clip = synthtalk.generate_clip(ident, clip_seed, num_frames, resolution)
            d = dict(clip.factors, frames=clip.frames, audio=clip.audio, emotion=clip.emotion)
        else:
            _, emo, audio, factors = synthtalk.sample_factors(
                ClipSpec(identity=ident, seed=clip_seed, num_frames=num_frames,
                         resolution=resolution))
            d = dict({k: v for k, v in factors.items() if not k.startswith("_")}, audio=audio,
                     emotion=emo)
        d.update(identity=ident, clip=c, clip_seed=clip_seed)
        out.append(d)
    return out


def save_params(directory: str, module: nnx.Module, meta: dict) -> None:
    """`directory/net.json` (meta: kind, architecture, metrics) + `directory/params` (orbax:
    every variable of the module, batch statistics included)."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    state = nnx.state(module).to_pure_dict()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), state, force=True)
    with open(os.path.join(directory, NET_JSON), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, default=float)


def read_meta(directory: str, kind: str) -> dict:
    path = os.path.join(os.path.abspath(os.fspath(directory)), NET_JSON)
    if not os.path.isfile(path):
        raise ConfigError(f"{directory!r} holds no trained {kind} ({NET_JSON} missing): train "
                          f"it with `vasa-jax evaluate --evaluators DIR` (trains missing ones)")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("kind") != kind:
        raise ConfigError(f"{path} describes a {meta.get('kind')!r}, not a {kind}: pass the "
                          f"{kind} folder")
    return meta


def load_params(directory: str, kind: str, build: Callable[[dict], nnx.Module]
                ) -> tuple[Any, dict]:
    """Rebuilds a module saved by `save_params` → (module in eval mode, meta)."""
    import orbax.checkpoint as ocp

    meta = read_meta(directory, kind)
    abstract = nnx.eval_shape(lambda: build(meta))
    graphdef, state = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          state.to_pure_dict())
    with ocp.StandardCheckpointer() as ckptr:
        values = ckptr.restore(os.path.join(os.path.abspath(directory), "params"), target)
    module = nnx.merge(graphdef, values)
    module.eval()
    return module, meta
