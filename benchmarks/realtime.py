"""Real-time generation speed: end to end, per component, FLOPs, memory, bf16 rendering.

    python benchmarks/realtime.py --config tiny                 # CPU, about a minute
                                                                # (+ full's FLOPs, shapes only)
    python benchmarks/realtime.py --config tiny,full            # GPU: also VASA-1 sizes
    python benchmarks/realtime.py --config full --dtype bf16    # render path in bfloat16

Random-weight models (timings do not depend on the weights), built at the sizes of
`configs/face_latent.py` + `configs/motion.py`: `tiny` = face_latent:tiny + motion:tiny with the
log-mel front end (80 bands); `full` = face_latent:vox512 (512², V_app 96×16×64×64) +
motion:full (8 layers, width 512, W = 25, K = 10) with a random Wav2Vec2-base front end
(768-d features). End-to-end figures run through `vasa_jax.inference.generate.Generator`,
i.e. the jitted, static-shape path of `vasa-jax generate`.

Measured (after a warm-up call, median of --repeats calls, each ended by block_until_ready;
compile times are reported separately):
  components       each piece separately jitted (`jit(f).lower(...).compile()`), on the real
                   intermediate of the previous piece:
                     audio_features   one window's features (streaming segment; log-mel, or
                                      Wav2Vec2-base over 2 s of context + the window + 80 ms);
                                      Wav2Vec2 offline: the whole track once
                     dit_window       one W-frame window, 10 and 50 DDIM steps, CFG on audio +
                                      gaze (conditional + 2 dropped variants in one batch)
                     warp_s2c         warp generator w_s→c + trilinear sampling of V_app
                     warp_c2d         warp generator w_c→d + trilinear sampling of V_can
                     trilinear_sample one sampling alone (part of each warp)
                     decoder_3d       the decoder's 3D residual blocks
                     decoder_2d       projection (depth → channels) + 2D decoder + uint8
                   per frame and per window, and their sum per frame next to the measured
                   end-to-end per-frame time (the rest is host work: copies, numpy, dispatch)
  render           the face decoder only (cached source latents), batches of render_batch:
                   device-only (one compiled call) and through Generator.render (with the
                   uint8 copy to the host)
  flops            XLA cost analysis of the compiled graphs (a multiply-add = 2 FLOPs): per
                   frame for the render path, per window for the DiT (= steps × one guided
                   evaluation: XLA counts a loop body once), achieved FLOP/s = FLOPs / time
                   and the fraction of the device's dense peak (table PEAK_TFLOPS; float32
                   runs are compared with the TF32 tensor-core peak, which JAX's default
                   matmul precision uses on Ampere and later; null on CPU)
  memory           `compiled.memory_analysis()` (argument / output / temp bytes) of the
                   render batch and the DiT window; on GPU `device.memory_stats()` peak bytes
  offline          `generate()` on `--seconds` of audio: total wall time and fps
  stream           `stream()` fed 40 ms chunks as fast as they are consumed: time to the
                   first yielded window (compute) and the first-frame latency a live caller
                   sees = audio buffering (W frames + the features' look-ahead) + that compute
  bf16             with --dtype bf16 the render path (warps + decoder) runs with bfloat16
                   parameters and latents (the 7 pose numbers and the sampling grid stay
                   float32, images are quantised from float32), in the components and end to
                   end; the float32 render runs on the same inputs and the uint8 difference
                   is reported. The DiT and the audio features stay float32.
  targets          VASA-1-level goals on one H100 for the `full` config: offline ≥ 90 fps,
                   streaming ≥ 80 fps at 10 steps, first frame ≤ 85 ms; met = null elsewhere
  costs_only       (--costs; on CPU by default every config not measured, i.e. `full`) FLOPs
                   per component and compiled memory from shapes alone: nothing runs
Writes JSON (default benchmarks/results/realtime_<device>[_bf16].json) with the machine facts.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
if importlib.util.find_spec("vasa_jax") is None:   # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from vasa_jax import diffusion
from vasa_jax.inference.bundle import Bundle, ModelFields
from vasa_jax.inference.generate import (FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, Controls, Generator,
                                         Normalizer, _WindowFeatures)
from vasa_jax.inference.motion import WindowSampler
from vasa_jax.models import audio as audio_lib
from vasa_jax.models import motion_dit
from vasa_jax.models.face import POSE_DIM, source_positions
from vasa_jax.models.face import build_model as build_face
from vasa_jax.models.warp import trilinear_sample

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by device_kind substring (the
# first match wins, so the PCIe H100 comes before the generic H100 = SXM5 entry). tf32 and bf16
# are tensor-core peaks with float32 accumulation.
PEAK_TFLOPS = (
    ("H100 PCIe", dict(name="H100 PCIe", fp32=51.2, tf32=378.0, bf16=756.0)),
    ("H100", dict(name="H100 SXM", fp32=66.9, tf32=494.7, bf16=989.4)),
    ("H200", dict(name="H200 SXM", fp32=66.9, tf32=494.7, bf16=989.4)),
    ("A100", dict(name="A100", fp32=19.5, tf32=156.0, bf16=312.0)),
    ("RTX 4090", dict(name="RTX 4090", fp32=82.6, tf32=82.6, bf16=165.2)),
)
TARGETS = dict(offline_fps=90.0, stream_fps=80.0, first_frame_ms=85.0)
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}

VARIANTS = {"tiny": ("tiny", "tiny", "logmel"), "full": ("vox512", "full", "wav2vec2")}


def config_models(name: str, variant: str) -> dict:
    """configs/<name>.py's MODELS[variant] (plain dicts; ml_collections stubbed if absent,
    as on the GPU machines)."""
    if "ml_collections" not in sys.modules:
        try:
            importlib.import_module("ml_collections")
        except ImportError:
            sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=dict)
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.MODELS[variant])


def random_model(build, seed: int = 0):
    """An NNX model of the right structure with random weights drawn in numpy: kernels
    N(0, 1/fan_in), norm scales 1, everything else 0 (speed does not depend on the weights,
    and the models' own initialisers compile one small program per parameter shape)."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        if len(x.shape) >= 2:
            fan_in = max(1, math.prod(x.shape[:-1]))
            return (rng.standard_normal(x.shape, np.float32) / np.sqrt(fan_in)).astype(x.dtype)
        one = "scale" in jax.tree_util.keystr(path)
        return np.full(x.shape, 1.0 if one else 0.0, x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def count(model) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def make_generator(variant: str, render_batch: int | None):
    face_v, motion_v, audio_kind = VARIANTS[variant]
    fcfg = ModelFields(config_models("face_latent", face_v))
    mcfg = ModelFields(config_models("motion", motion_v))
    t0 = time.perf_counter()
    face = random_model(lambda: build_face(fcfg, nnx.Rngs(0)), seed=0)
    motion = random_model(lambda: motion_dit.build_model(mcfg, nnx.Rngs(1)), seed=1)
    if audio_kind == "logmel":
        front = audio_lib.make_audio_features("logmel", n_mels=int(mcfg.audio_dim))
        audio_params = 0
    else:
        w2v = random_model(lambda: audio_lib.Wav2Vec2(audio_lib.Wav2Vec2Config.base(),
                                                      rngs=nnx.Rngs(2)), seed=2)
        front = audio_lib.Wav2Vec2Features(w2v)
        audio_params = count(w2v)
    build_s = time.perf_counter() - t0
    dx, da = int(mcfg.motion_dim), int(mcfg.audio_dim)
    stats = {f"{k}_{s}": np.full(d, 0.0 if s == "mean" else 1.0, np.float32)
             for k, d in (("motion", dx), ("audio_feat", da), ("gaze", 2), ("distance", 1))
             for s in ("mean", "std")}
    stats["distance_mean"] = np.full(1, 3.0, np.float32)
    manifest = dict(face=dict(model=dict(fcfg)), motion=dict(
        model=dict(mcfg), diffusion=dict(num_train_timesteps=1000, beta_schedule="linear",
                                         beta_start=1e-4, beta_end=0.02),
        sample=dict(steps=10, cfg=dict(audio=0.5, gaze=1.0))),
        audio=dict(kind=audio_kind, feature_dim=da), checkpoint_hash="random")
    bundle = Bundle(path=f"<random {variant}>", manifest=manifest, face=face, motion=motion,
                    stats=stats)
    gen = Generator(bundle, audio_features=front, render_batch=render_batch)
    info = dict(face_config=f"configs/face_latent.py:{face_v}",
                motion_config=f"configs/motion.py:{motion_v}", audio_features=audio_kind,
                params=dict(face=count(face), motion=count(motion), audio=audio_params),
                image_size=gen.image_size, window=gen.window, history=gen.history,
                render_batch=gen.render_batch, build_seconds=round(build_s, 2))
    return gen, info


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of `repeats` later calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-rate modulated harmonics + noise (speed does not depend on the content)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    return (0.2 * env * voiced + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Measuring helpers.


def median_ms(call, repeats: int) -> float:
    """Median wall time of `call()` in ms over `repeats` calls after one warm-up call; every
    call is ended by block_until_ready on its result."""
    jax.block_until_ready(call())
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def xla_stats(compiled) -> dict:
    """FLOPs (cost analysis) and memory (memory analysis) of a compiled executable."""
    flops = None
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):   # older jax: one dict per device
            cost = cost[0] if cost else None
        if cost and "flops" in cost:
            flops = float(cost["flops"])
    except Exception:   # noqa: BLE001 - not every backend implements it
        pass
    memory = None
    try:
        m = compiled.memory_analysis()
        if m is not None:
            memory = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
                      ("argument", "output", "temp", "alias")}
            memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - \
                memory["alias"]
    except Exception:   # noqa: BLE001
        pass
    return dict(flops=flops, memory_bytes=memory)


class Piece:
    """One separately jitted component: compiled once from its real arguments, then timed."""

    def __init__(self, fn, *args, jitted=None):
        t0 = time.perf_counter()
        self.compiled = (jitted or jax.jit(fn)).lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        self.args = args
        self.stats = xla_stats(self.compiled)

    def __call__(self):
        return self.compiled(*self.args)

    def measure(self, repeats: int) -> float:
        self.ms = median_ms(self, repeats)
        return self.ms


def cast_floats(tree, dtype, keep=()):
    """Floating leaves → dtype (dict keys in `keep` untouched)."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    if isinstance(tree, dict):
        return {k: (v if k in keep else jax.tree.map(cast, v)) for k, v in tree.items()}
    return jax.tree.map(cast, tree)


def quantise(img):
    """(-1, 1) image → uint8, always from float32 (bfloat16 has 8 significant bits: rounding
    255·x there alone would cost up to a level)."""
    img = img.astype(jnp.float32)
    return jnp.clip(jnp.round((img + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def peak_for(device_kind: str) -> dict | None:
    for key, peak in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peak
    return None


def rate(flops: float | None, ms: float, peak: dict | None, dtype: str) -> dict:
    """Achieved TFLOP/s and the fraction of the dense peak for this dtype."""
    if not flops or not ms:
        return dict(achieved_tflops=None, fraction_of_peak=None)
    tflops = flops / (ms * 1e-3) / 1e12
    ref = None if peak is None else ("bf16" if dtype == "bf16" else "tf32")
    return dict(achieved_tflops=round(tflops, 4),
                fraction_of_peak=None if ref is None else round(tflops / peak[ref], 4),
                peak_reference=None if ref is None else f"{peak['name']} {ref} "
                                                        f"{peak[ref]} TFLOP/s")


def r3(x):
    return None if x is None else round(float(x), 3)


# ----------------------------------------------------------------------------------------------
# The render path, split into its pieces.


RENDER_MODES = {   # mode: (dtype of the warps incl. V_app and the grid's flow, of the decoder)
    "fp32": ("fp32", "fp32"),
    "bf16": ("bf16", "bf16"),
    "bf16_decoder": ("fp32", "bf16"),
}


def render_functions(graphdef, r: int, warp_dt, dec_dt) -> dict:
    """The render path at batch r as pure functions of (state, ...): `fused` is the per-frame
    decode (the Generator's decode graph: the canonical volume src["v_can"], made once per
    portrait by w_s→c in `prepare`, and batch-1 latents broadcast inside), the others its
    pieces, `warp_s2c` (the per-portrait part) included. Warps (flow generators, volumes,
    sampling) in warp_dt, decoder in dec_dt."""

    def rep(x):
        return jnp.broadcast_to(x, (r, *x.shape[1:]))

    def split(m):
        return m[:, :POSE_DIM], m[:, POSE_DIM:].astype(warp_dt)

    def skip_inputs(src, grid):
        """A model with a source skip (model.skip_channels > 0): (f_src, each driver voxel's
        source position) for the decoder; None without one."""
        if "f_src" not in src:
            return None
        pos = source_positions(rep(src["g_s2c"]), grid)
        return rep(src["f_src"]).astype(dec_dt), pos.astype(dec_dt)

    def fused(sw, sd, src, motion):
        grid = grid_c2d(sw, src, motion)
        volume = trilinear_sample(rep(src["v_can"]), grid)
        dyn = motion[:, POSE_DIM:].astype(dec_dt)
        return quantise(nnx.merge(graphdef, sd).decoder(volume.astype(dec_dt), dyn,
                                                        skip_inputs(src, grid)))

    def warp_s2c(sw, src):
        model = nnx.merge(graphdef, sw)
        grid = model.warp_s2c(rep(src["z_pose"]), rep(src["z_dyn"]), rep(src["z_id"]))
        return trilinear_sample(rep(src["v_app"]), grid)

    def grid_c2d(sw, src, motion):
        pose, dyn = split(motion)
        return nnx.merge(graphdef, sw).warp_c2d(pose, dyn, rep(src["z_id"]))

    def warp_c2d(sw, src, v_can, motion):
        return trilinear_sample(v_can, grid_c2d(sw, src, motion))

    def decoder_3d(sd, volume):
        return nnx.merge(graphdef, sd).decoder.run3d(volume.astype(dec_dt))

    def decoder_2d(sd, volume, motion, skip=None):   # Decoder.__call__ after its 3D blocks
        dyn = motion[:, POSE_DIM:].astype(dec_dt)
        return quantise(nnx.merge(graphdef, sd).decoder.run2d(volume.astype(dec_dt), dyn, skip))

    return dict(fused=fused, warp_s2c=warp_s2c, grid_c2d=grid_c2d, warp_c2d=warp_c2d,
                decoder_3d=decoder_3d, decoder_2d=decoder_2d, skip_inputs=skip_inputs)


class RenderPath:
    """The render path at the render batch in one of RENDER_MODES, compiled from real inputs:
    `fused` (one call) and `pieces`, each run on the real output of the one before."""

    def __init__(self, gen: Generator, mode: str, motion: np.ndarray, pieces: bool = True):
        warp_dt, dec_dt = (DTYPES[d] for d in RENDER_MODES[mode])
        graphdef, _ = nnx.split(gen.face)
        self.mode = mode
        state32 = gen._face_state
        state16 = cast_floats(state32, jnp.bfloat16) if "bf16" in mode else None
        sw = state32 if warp_dt == jnp.float32 else state16
        sd = state32 if dec_dt == jnp.float32 else state16
        # Latents in the warps' dtype; the pose stays float32 (it only feeds the float32 rigid
        # grid: bf16 would round a 30° yaw to 0.125°, half a pixel at 512²).
        src = cast_floats(gen.source.latents, warp_dt, keep=("z_pose",))
        mo = jnp.asarray(motion, jnp.float32)
        fn = render_functions(graphdef, len(motion), warp_dt, dec_dt)
        self.args = (sw, sd, src)
        self.fused = Piece(fn["fused"], sw, sd, src, mo)
        self.images = np.asarray(self.fused())
        self.pieces, self.chain_max_diff = {}, None
        if not pieces:
            return
        self.pieces["warp_s2c"] = p = Piece(fn["warp_s2c"], sw, src)
        v_can = p()
        self.pieces["warp_c2d"] = p = Piece(fn["warp_c2d"], sw, src, v_can, mo)
        v_drv = p()
        grid = jax.jit(fn["grid_c2d"])(sw, src, mo)
        self.pieces["trilinear_sample"] = Piece(trilinear_sample, v_can, grid)
        self.pieces["decoder_3d"] = p = Piece(fn["decoder_3d"], sd, v_drv)
        # A source skip's inputs (one 3-channel sampling at volume resolution) are made here,
        # outside the timed pieces; the fused decode includes them.
        skip = jax.jit(fn["skip_inputs"])(src, grid)
        self.pieces["decoder_2d"] = Piece(fn["decoder_2d"], sd, p(), mo, skip)
        chained = np.asarray(self.pieces["decoder_2d"]())
        # The pieces must compose to the fused decode (fusion may move a rounding by a level).
        self.chain_max_diff = int(np.abs(chained.astype(int) - self.images.astype(int)).max())


def flow_error(gen: Generator) -> dict:
    """Size of the source's non-rigid flow (fp32) and its bf16 error, in voxels of V_app."""
    graphdef, _ = nnx.split(gen.face)
    src = gen.source.latents

    def flow(state, z_dyn, z_id):
        return nnx.merge(graphdef, state).warp_s2c.flow(z_dyn, z_id).astype(jnp.float32)

    f32 = jax.jit(flow)(gen._face_state, src["z_dyn"], src["z_id"])
    f16 = jax.jit(flow)(cast_floats(gen._face_state, jnp.bfloat16),
                        src["z_dyn"].astype(jnp.bfloat16), src["z_id"].astype(jnp.bfloat16))
    voxels = f32.shape[3] / 2   # normalised [-1, 1] → voxels along H/W
    return dict(fp32_rms_voxels=r3(jnp.sqrt(jnp.mean(f32 ** 2)) * voxels),
                bf16_max_error_voxels=r3(jnp.abs(f16 - f32).max() * voxels))


def pixel_diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float(np.mean(d.astype(np.float64) ** 2))
    return dict(max_abs=int(d.max()), mean_abs=round(float(d.mean()), 4),
                p999_abs=int(np.percentile(d, 99.9)),
                fraction_over_1=round(float(np.mean(d > 1)), 6),
                fraction_over_2=round(float(np.mean(d > 2)), 6),
                psnr_db=None if mse == 0 else round(10 * math.log10(255.0 ** 2 / mse), 2))


# ----------------------------------------------------------------------------------------------
# The benchmark of one config.


def bench(variant: str, seconds: float, repeats: int, render_batch: int | None,
          dtype: str = "fp32") -> dict:
    gen, info = make_generator(variant, render_batch)
    s, r = gen.image_size, gen.render_batch
    w, k, da = gen.window, gen.history, gen.motion.audio_dim
    rng = np.random.default_rng(0)
    dev = jax.devices()[0]
    peak = None if dev.platform == "cpu" else peak_for(dev.device_kind)
    portrait = (rng.random((s, s, 3)) * 255).astype(np.uint8)
    t_prep, prep = timed(lambda: gen.prepare(portrait), 1)
    out = dict(info, render_dtype=dtype, dit_dtype="fp32", audio_dtype="fp32",
               prepare_ms=dict(first=round(t_prep * 1e3, 1), warm=round(prep * 1e3, 2)))

    # ---- render path: pieces, fused, bf16 vs fp32 on the same inputs.
    n_render = r * max(2, int(math.ceil(25 / r)))
    motion = (0.1 * rng.standard_normal((n_render, gen.motion_dim))).astype(np.float32)
    motion[:, 6] = 0.0   # log-scale 0: unit scale

    def generator_render(compile_s=None):
        """Through Generator.render (uint8 copies to the host, last batch padded)."""
        first, warm = timed(lambda: list(gen.render(motion)), repeats)
        out["render_ms_per_frame"] = round(warm / n_render * 1e3, 3)
        out["render_fps"] = round(n_render / warm, 1)
        out["render_compile_s"] = round(first - warm if compile_s is None else compile_s, 2)

    if dtype == "fp32":
        generator_render()
    path = RenderPath(gen, dtype, motion[:r])
    comp, flops, memory = {}, {}, {}
    for name, piece in path.pieces.items():
        piece.measure(repeats)
        f = piece.stats["flops"]
        comp[name] = dict(ms_per_batch=r3(piece.ms), ms_per_frame=r3(piece.ms / r),
                          flops_per_frame=f and f / r, compile_s=round(piece.compile_s, 2),
                          **rate(f, piece.ms, peak, dtype))
    path.fused.measure(repeats)
    render_flops = path.fused.stats["flops"]
    out["render_device"] = dict(
        batch=r, ms_per_batch=r3(path.fused.ms), ms_per_frame=r3(path.fused.ms / r),
        fps=round(r / path.fused.ms * 1e3, 1), compile_s=round(path.fused.compile_s, 2),
        pieces_compose_max_diff_levels=path.chain_max_diff)
    flops["render_per_frame"] = render_flops and render_flops / r
    flops["render"] = rate(render_flops, path.fused.ms, peak, dtype)
    memory["render_batch"] = path.fused.stats["memory_bytes"]
    if dtype == "fp32":
        ref = path
        gen_images = np.asarray(gen._decode(gen._face_state, gen.source.latents,
                                            jnp.asarray(motion[:r])))
        # The fused decode is the Generator's decode graph: the same pixels.
        out["render_device"]["matches_generator_decode"] = bool(
            np.array_equal(gen_images, path.images))
    else:
        ref = RenderPath(gen, "fp32", motion[:r], pieces=False)
        ref.fused.measure(repeats)
        dec_only = RenderPath(gen, "bf16_decoder", motion[:r], pieces=False)
        dec_only.fused.measure(repeats)
        out["bf16"] = dict(
            frames_compared=r, render_fp32_ms_per_frame=r3(ref.fused.ms / r),
            render_bf16=dict(
                what="warps (flow generators, V_app, sampling) and decoder in bf16",
                ms_per_frame=r3(path.fused.ms / r),
                speedup=round(ref.fused.ms / path.fused.ms, 2),
                pixel_diff_vs_fp32_uint8=pixel_diff(path.images, ref.images)),
            render_bf16_decoder_only=dict(
                what="warps in fp32, decoder (3D blocks, projection, 2D) in bf16",
                ms_per_frame=r3(dec_only.fused.ms / r),
                speedup=round(ref.fused.ms / dec_only.fused.ms, 2),
                pixel_diff_vs_fp32_uint8=pixel_diff(dec_only.images, ref.images)),
            warp_s2c_flow=flow_error(gen),
            note="same source latents and motion; bf16 parameters and activations, the 7 pose "
                 "numbers and the rigid grid float32, images quantised from float32; random "
                 "weights give rough V_app volumes and large flows, so grid errors show more "
                 "than they would in a trained model")
        # End to end with the bf16 render: Generator.render calls this instead of its decode.
        fused_lp, lp_args = path.fused.compiled, path.args
        gen._decode = lambda _state, _src, m: fused_lp(*lp_args, m)
        generator_render(path.fused.compile_s)
    imgs = ref.images.astype(np.float32)
    out["image_stats_fp32"] = dict(
        mean=round(float(imgs.mean()), 2), std=round(float(imgs.std()), 2),
        fraction_saturated=round(float(np.mean((ref.images == 0) | (ref.images == 255))), 4),
        note="random weights: the bf16 difference is meaningful only if the images are not "
             "saturated")

    # ---- DiT window sampling (features given), CFG audio + gaze, 10 and 50 steps.
    ctl = gen.resolve(Controls())
    conds = dict(audio=jnp.zeros((1, w, da)), x_pre=jnp.zeros((1, k, gen.motion_dim)),
                 a_pre=jnp.zeros((1, k, da)), gaze=ctl.gaze, distance=ctl.distance,
                 emotion=ctl.emotion, audio_valid=np.ones((1, w), bool),
                 history_valid=np.ones((1,), bool))
    traced = {c: jnp.asarray(v, jnp.float32) for c, v in ctl.scales.items()}
    out["dit_window_ms"], out["dit_compile_s"] = {}, {}
    key = jax.random.key(0)
    for steps in (10, 50):
        sampler = gen._sampler(steps, tuple(ctl.scales))
        t0 = time.perf_counter()
        sampler(key, conds, ctl.scales).block_until_ready()
        first = time.perf_counter() - t0
        warm = median_ms(lambda: sampler(key, conds, ctl.scales), repeats) / 1e3
        out["dit_window_ms"][str(steps)] = round(warm * 1e3, 3)
        out["dit_compile_s"][str(steps)] = round(first - warm, 2)
        if steps == 10:   # same trace as the calls above (no re-trace), for its memory
            memory["dit_window"] = xla_stats(sampler._fn.lower(
                sampler.state, key, dict(conds), traced).compile())["memory_bytes"]
    # One guided evaluation (conditional + one dropped copy per guided condition, batched).
    graphdef = sampler.graphdef

    def denoise(state, x_t, t, conds, scales):
        return motion_dit.guided_x0(nnx.merge(graphdef, state), x_t, t, conds, scales)

    step = Piece(denoise, sampler.state, jnp.zeros((1, w, gen.motion_dim)),
                 jnp.asarray(500, jnp.int32), conds, traced)
    step.measure(repeats)
    dit_step_flops = step.stats["flops"]
    for steps in (10, 50):
        ms = out["dit_window_ms"][str(steps)]
        f = dit_step_flops and steps * dit_step_flops
        comp[f"dit_window_{steps}_steps"] = dict(
            ms_per_window=ms, ms_per_frame=r3(ms / w), flops_per_window=f,
            flops_per_frame=f and f / w, **rate(f, ms, peak, "fp32"))
    comp["dit_guided_eval"] = dict(ms=r3(step.ms), flops=dit_step_flops,
                                   model_evaluations_batched=1 + len(ctl.scales))
    flops["dit_window_10_steps"] = comp["dit_window_10_steps"]["flops_per_window"]
    flops["dit_window_50_steps"] = comp["dit_window_50_steps"]["flops_per_window"]
    flops["dit"] = {s: {x: comp[f"dit_window_{s}_steps"][x] for x in
                        ("achieved_tflops", "fraction_of_peak")} for s in ("10", "50")}

    # ---- audio features: one streaming window (and for Wav2Vec2 the whole offline track).
    wav = speech_like(seconds)
    n_frames = len(wav) // SAMPLES_PER_FRAME
    feats = gen.features
    seg = np.zeros((1, feats.segment), np.float32)   # the streaming segment's static shape
    seg[0, :min(len(wav), feats.segment)] = wav[:feats.segment]
    seg = jnp.asarray(seg)
    audio_win = Piece(None, feats.front.params, seg, jitted=feats._window)
    audio_win.measure(repeats)
    comp["audio_features_window"] = dict(
        kind=feats.kind, segment_samples=feats.segment, ms_per_window=r3(audio_win.ms),
        ms_per_frame=r3(audio_win.ms / w), flops_per_window=audio_win.stats["flops"],
        **rate(audio_win.stats["flops"], audio_win.ms, peak, "fp32"))
    audio_offline_ms_per_frame = audio_win.ms / w
    if not feats.exact:   # Wav2Vec2: generate() runs it once over the whole track
        track = Piece(None, feats.front.params, jnp.asarray(wav)[None], jitted=feats._whole)
        track.measure(max(3, repeats // 2))
        audio_offline_ms_per_frame = track.ms / n_frames
        comp["audio_features_track"] = dict(
            frames=n_frames, ms_per_track=r3(track.ms), ms_per_frame=r3(track.ms / n_frames),
            flops_per_frame=track.stats["flops"] and track.stats["flops"] / n_frames,
            **rate(track.stats["flops"], track.ms, peak, "fp32"))

    # ---- offline: whole track, default controls (10 steps, CFG audio + gaze).
    first, warm = timed(lambda: gen.generate(wav, Controls(seed=0)), max(3, repeats // 2))
    t0 = time.perf_counter()
    motion_only = gen.motion_offline(wav, ctl)
    motion_s = time.perf_counter() - t0
    out["offline"] = dict(seconds_of_audio=round(len(wav) / SAMPLE_RATE, 3), frames=n_frames,
                          wall_s=round(warm, 3), fps=round(n_frames / warm, 1),
                          ms_per_frame=r3(warm / n_frames * 1e3),
                          realtime_factor=round(n_frames / FPS / warm, 2),
                          motion_only_fps=round(len(motion_only) / motion_s, 1),
                          first_call_s=round(first, 2))

    # ---- streaming: 40 ms chunks, consumed as fast as possible.
    def run_stream():
        chunks = (wav[i:i + SAMPLES_PER_FRAME] for i in range(0, len(wav), SAMPLES_PER_FRAME))
        t0 = time.perf_counter()
        first_window, frames = None, 0
        for batch in gen.stream(chunks, Controls(seed=0)):
            if first_window is None:
                first_window = time.perf_counter() - t0
            frames += len(batch)
        return first_window, frames, time.perf_counter() - t0

    run_stream()   # warm-up
    runs = [run_stream() for _ in range(max(3, repeats // 2))]
    first_window = float(np.median([x[0] for x in runs]))
    total = float(np.median([x[2] for x in runs]))
    buffering = (w * SAMPLES_PER_FRAME + feats.lookahead) / SAMPLE_RATE
    out["stream"] = dict(
        chunk_ms=40, window_frames=w, first_window_compute_ms=round(first_window * 1e3, 2),
        audio_buffering_ms=round(buffering * 1e3, 1),
        first_frame_latency_ms=round((buffering + first_window) * 1e3, 1),
        fps=round(runs[0][1] / total, 1), ms_per_frame=r3(total / runs[0][1] * 1e3),
        realtime_factor=round(runs[0][1] / FPS / total, 2),
        max_buffer_samples=gen.last_stream_stats.get("max_buffer_samples"))

    # ---- does it add up? Per frame: audio + DiT(10 steps)/W + the per-frame render pieces
    # (w_s→c runs once per portrait, in prepare()).
    render_pieces = ("warp_c2d", "decoder_3d", "decoder_2d")
    parts = {"audio_features": audio_offline_ms_per_frame,
             "dit_10_steps": out["dit_window_ms"]["10"] / w,
             **{p: path.pieces[p].ms / r for p in render_pieces}}
    total_ms = sum(parts.values())
    e2e = out["offline"]["ms_per_frame"]
    out["components"] = comp
    out["per_frame_budget_ms"] = dict(
        parts={p: r3(v) for p, v in parts.items()}, sum=r3(total_ms),
        render_pieces_sum=r3(sum(parts[p] for p in render_pieces)),
        render_fused=out["render_device"]["ms_per_frame"],
        offline_end_to_end=e2e, stream_end_to_end=out["stream"]["ms_per_frame"],
        sum_over_offline=round(total_ms / e2e, 3),
        warp_s2c_once_per_portrait_ms=r3(path.pieces["warp_s2c"].ms / r),
        note="audio_features is the offline path's cost per frame; the DiT window is shared by "
             "its W frames and the pieces by the render batch; w_s→c (warp_s2c, batch-1 "
             "source broadcast to the render batch here) runs once per portrait in prepare() "
             "and is not in the sum; the rest of end to end is host work (device→host uint8 "
             "copies, numpy, dispatch)")
    out["flops"] = dict(flops, peak_tflops=peak,
                        render_path="per frame: w_c→d + decoder (canonical volume cached)",
                        note="XLA cost analysis; a multiply-add = 2 FLOPs")
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    memory["device_peak_bytes_in_use"] = (stats or {}).get("peak_bytes_in_use")
    memory["device_bytes_limit"] = (stats or {}).get("bytes_limit")
    out["memory"] = memory
    out["targets"] = targets(variant, dev, out)
    out["trace_counts"] = gen.trace_counts()
    return out


def abstract_costs(variant: str, render_batch: int | None) -> dict:
    """FLOPs per frame / window and compiled memory of every component at `variant`'s sizes
    from shapes alone (nnx.eval_shape + jit(...).lower(ShapeDtypeStructs).compile() for this
    backend; nothing is allocated or run), float32."""
    face_v, motion_v, audio_kind = VARIANTS[variant]
    fcfg = ModelFields(config_models("face_latent", face_v))
    mcfg = ModelFields(config_models("motion", motion_v))
    t0 = time.perf_counter()
    f_def, f_state = nnx.split(nnx.eval_shape(lambda: build_face(fcfg, nnx.Rngs(0))))
    motion = nnx.eval_shape(lambda: motion_dit.build_model(mcfg, nnx.Rngs(1)))
    w, k, dx, da = motion.window, motion.history, motion.motion_dim, motion.audio_dim
    r = int(render_batch or w)

    def sds(*shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype)

    def stats(fn, *args):
        return xla_stats(jax.jit(fn).lower(*args).compile())

    vs, d, c = int(fcfg.volume_size), int(fcfg.volume_depth), int(fcfg.volume_channels)
    src = dict(v_app=sds(1, d, vs, vs, c), z_id=sds(1, int(fcfg.id_dim)),
               z_pose=sds(1, POSE_DIM), z_dyn=sds(1, int(fcfg.dyn_dim)))
    src["v_can"], g_s2c = jax.eval_shape(lambda s, x: nnx.merge(f_def, s).to_canonical(
        x["v_app"], x["z_id"], x["z_pose"], x["z_dyn"], return_grid=True), f_state, src)
    skip = None
    if int(fcfg.get("skip_channels", 0)):   # a source skip: its cached features and grid
        size = int(fcfg.image_size)
        f_src = jax.eval_shape(lambda s, x: nnx.merge(f_def, s).skip_encoder(x), f_state,
                               sds(1, size, size, 3))
        src.update(f_src=f_src, g_s2c=g_s2c)
        skip = (sds(r, *f_src.shape[1:]), sds(r, *g_s2c.shape[1:]))
    mo, vol = sds(r, dx), sds(r, d, vs, vs, c)
    fn = render_functions(f_def, r, jnp.float32, jnp.float32)
    render = stats(fn["fused"], f_state, f_state, src, mo)
    pieces = dict(warp_s2c=stats(fn["warp_s2c"], f_state, src),
                  warp_c2d=stats(fn["warp_c2d"], f_state, src, vol, mo),
                  trilinear_sample=stats(trilinear_sample, vol, sds(r, d, vs, vs, 3)),
                  decoder_3d=stats(fn["decoder_3d"], f_state, vol),
                  decoder_2d=stats(fn["decoder_2d"], f_state, vol, mo, skip))
    per_frame = {n: v["flops"] and v["flops"] / r for n, v in pieces.items()}

    # DiT: one guided evaluation (CFG audio + gaze: 3 model evaluations batched) × steps.
    m_def, m_state = nnx.split(motion)
    conds = dict(audio=sds(1, w, da), x_pre=sds(1, k, dx), a_pre=sds(1, k, da),
                 gaze=sds(1, 2), distance=sds(1, 1), emotion=sds(1, motion.emotion_dim),
                 audio_valid=sds(1, w, dtype=bool), history_valid=sds(1, dtype=bool))
    scales = {c: sds() for c in ("audio", "gaze")}

    def denoise(state, x_t, t, conds, scales):
        return motion_dit.guided_x0(nnx.merge(m_def, state), x_t, t, conds, scales)

    dit_step = stats(denoise, m_state, sds(1, w, dx), sds(dtype=jnp.int32), conds, scales)
    sampler = WindowSampler(motion, diffusion.make_schedule(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
        num_steps=10, scales={"audio": 0.5, "gaze": 1.0})
    key = jax.eval_shape(lambda: jax.random.key(0))
    dit_window = xla_stats(sampler._fn.lower(sampler.state, key, conds, scales).compile())

    # Audio features: one streaming window's segment; Wav2Vec2 also a 10 s track offline.
    if audio_kind == "logmel":
        front = audio_lib.make_audio_features("logmel", n_mels=da)
    else:
        front = audio_lib.Wav2Vec2Features(nnx.eval_shape(
            lambda: audio_lib.Wav2Vec2(audio_lib.Wav2Vec2Config.base(), rngs=nnx.Rngs(2))))
    norm = Normalizer({f"{n}_{s}": np.full(dim, 0.0 if s == "mean" else 1.0, np.float32)
                       for n, dim in (("motion", dx), ("audio_feat", da), ("gaze", 2),
                                      ("distance", 1)) for s in ("mean", "std")})
    feats = _WindowFeatures(front, norm, w, lambda name: None)
    audio_window = stats(feats.front.apply, front.params, sds(1, feats.segment))["flops"]
    track_frames = 250
    audio_frame = audio_window and audio_window / w
    if not feats.exact:
        track = stats(front.apply, front.params, sds(1, track_frames * SAMPLES_PER_FRAME))
        audio_frame = track["flops"] and track["flops"] / track_frames

    f10 = dit_step["flops"] and 10 * dit_step["flops"]
    render_pf = render["flops"] and render["flops"] / r
    total = sum(x for x in (audio_frame, f10 and f10 / w, render_pf) if x)
    need = total * TARGETS["offline_fps"] / 1e12
    h100 = peak_for("H100")
    return dict(
        note="shapes only: compiled for this backend, nothing run; float32; FLOPs from XLA "
             "cost analysis (a multiply-add = 2); memory = compiled buffer sizes on this "
             "backend (a GPU compile fuses differently)",
        render_batch=r, window=w,
        render_flops_per_frame=render_pf, render_memory_bytes=render["memory_bytes"],
        pieces_flops_per_frame=per_frame,
        warp_s2c_once_per_portrait_flops=pieces["warp_s2c"]["flops"] and
        pieces["warp_s2c"]["flops"] / r,
        render_flops_note="per frame: w_c→d + decoder; w_s→c (pieces_flops_per_frame.warp_s2c) "
                          "runs once per portrait (canonical volume cached in prepare())",
        dit_guided_eval_flops=dit_step["flops"],
        dit_window_flops={"10": f10, "50": dit_step["flops"] and 50 * dit_step["flops"]},
        dit_window_memory_bytes=dit_window["memory_bytes"],
        audio_window_flops=audio_window, audio_segment_samples=feats.segment,
        audio_flops_per_frame_offline=audio_frame,
        total_flops_per_frame_offline_10_steps=total,
        tflops_needed_for_target_offline_fps=round(need, 3),
        of_h100_sxm_peak={p: round(need / h100[p], 4) for p in ("fp32", "tf32", "bf16")},
        seconds=round(time.perf_counter() - t0, 1))


def targets(variant: str, dev, out: dict) -> dict:
    """VASA-1-level goals; met is judged for the full config on one H100 only."""
    judged = variant == "full" and dev.platform == "gpu" and "H100" in dev.device_kind
    why = None if judged else ("the targets are for the full (512²) config" if variant != "full"
                               else f"not an H100 ({dev.device_kind})")

    def goal(measured, limit, at_least, definition):
        met = None if not judged else bool(measured >= limit if at_least else measured <= limit)
        return dict(target=f"{'>=' if at_least else '<='} {limit:g}", measured=measured,
                    met=met, definition=definition)

    st = out["stream"]
    return dict(
        device="one H100", config="full", judged=judged, not_judged_because=why,
        offline_fps=goal(out["offline"]["fps"], TARGETS["offline_fps"], True,
                         "generate(): frames / wall time, 10 DDIM steps, CFG audio + gaze"),
        stream_fps=goal(st["fps"], TARGETS["stream_fps"], True,
                        "stream() fed 40 ms chunks as fast as consumed, 10 steps, sustained "
                        "over the whole track"),
        first_frame_ms=goal(st["first_window_compute_ms"], TARGETS["first_frame_ms"], False,
                            "compute from the first window's audio being complete to its "
                            "frames (audio features + DiT + rendering the window); the audio "
                            "buffering of W frames + look-ahead comes on top: "
                            f"{st['audio_buffering_ms']} ms"))


def device_name() -> str:
    dev = jax.devices()[0]
    kind = dev.platform if dev.platform == "cpu" else dev.device_kind
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")


def machine_facts() -> dict:
    import flax

    dev = jax.devices()[0]
    return dict(jax=jax.__version__, flax=flax.__version__, python=platform.python_version(),
                backend=jax.default_backend(), device_kind=dev.device_kind,
                num_devices=jax.device_count(), machine=platform.machine(),
                processor=platform.processor() or None, cpu_count=os.cpu_count(),
                default_matmul_precision=getattr(jax.config, "jax_default_matmul_precision",
                                                 None),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None,
                    help="comma list of tiny, full (default: tiny on CPU, tiny,full on GPU)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="audio length for offline/stream (default 8 tiny, 10 full)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed calls per measurement (median); offline/stream: max(3, half)")
    ap.add_argument("--render-batch", type=int, default=None,
                    help="frames per decoder call (default: the DiT window)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                    help="render path (warps + decoder) precision; bf16 also reports the "
                         "pixel difference to fp32 (DiT and audio stay fp32)")
    ap.add_argument("--costs", default=None,
                    help="comma list of configs to cost from shapes alone (FLOPs, compiled "
                         "memory; nothing runs); default on CPU: those not measured; 'none'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = (args.config or ("tiny" if jax.default_backend() == "cpu" else "tiny,full")).split(",")
    bad = [n for n in names + (args.costs or "").split(",")
           if n and n != "none" and n not in VARIANTS]
    if bad:
        ap.error(f"unknown --config {bad}: use {', '.join(VARIANTS)}")
    result = dict(benchmark="realtime", **machine_facts(), dtype=args.dtype, runs={})
    for name in names:
        seconds = args.seconds or (8.0 if name == "tiny" else 10.0)
        t0 = time.perf_counter()
        try:
            result["runs"][name] = bench(name, seconds, args.repeats, args.render_batch,
                                         args.dtype)
        except Exception as e:  # e.g. out of memory for the full sizes: record it, go on
            detail = " ".join(str(e).split())[:300]
            result["runs"][name] = dict(error=f"{type(e).__name__}: {detail}")
        result["runs"][name]["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: result["runs"][name]}, indent=1), flush=True)
    if args.costs is None:
        costs = [n for n in VARIANTS if n not in names] if jax.default_backend() == "cpu" else []
    else:
        costs = [n for n in args.costs.split(",") if n and n != "none"]
    if costs:
        result["costs_only"] = {}
    for name in costs:
        try:
            result["costs_only"][name] = abstract_costs(name, args.render_batch)
        except Exception as e:  # noqa: BLE001
            result["costs_only"][name] = dict(error=f"{type(e).__name__}: "
                                                    f"{' '.join(str(e).split())[:300]}")
        print(json.dumps({f"costs_only {name}": result["costs_only"][name]}, indent=1),
              flush=True)
    suffix = "" if args.dtype == "fp32" else f"_{args.dtype}"
    default = ROOT / "benchmarks" / "results" / f"realtime_{device_name()}{suffix}.json"
    out = pathlib.Path(args.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
