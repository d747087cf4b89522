"""Real-time generation speed: rendering, DiT sampling, offline fps and streaming latency.

    python benchmarks/realtime.py --config tiny                 # CPU, well under 2 minutes
    python benchmarks/realtime.py --config tiny,full            # GPU: also VASA-1 sizes

Random-weight models (timings do not depend on the weights), built at the sizes of
`configs/face_latent.py` + `configs/motion.py`: `tiny` = face_latent:tiny + motion:tiny with the
log-mel front end (80 bands); `full` = face_latent:vox512 (512², V_app 96×16×64×64) +
motion:full (8 layers, width 512, W = 25, K = 10) with a random Wav2Vec2-base front end
(768-d features). Everything runs through `vasa_jax.inference.generate.Generator`, i.e. the
jitted, static-shape path of `vasa-jax generate`.

Measured (after a warm-up call; compile times are reported separately):
  render_ms_per_frame      face decoder only (cached source latents), batches of render_batch
  dit_window_ms[steps]     one W-frame DiT window, CFG on audio + gaze (3 model evaluations per
                           step), for 10 and 50 DDIM steps
  offline                  `generate()` on `--seconds` of audio: total wall time and fps
  stream                   `stream()` fed 40 ms chunks as fast as they are consumed: time to the
                           first yielded window (compute) and the first-frame latency a live
                           caller sees = audio buffering (W frames + the features' look-ahead)
                           + that compute; streaming fps
Writes JSON (default benchmarks/results/realtime_<device>.json) with the machine facts.
"""
from __future__ import annotations

import argparse
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

from vasa_jax.inference.bundle import Bundle, ModelFields
from vasa_jax.inference.generate import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, Controls, Generator
from vasa_jax.models import audio as audio_lib
from vasa_jax.models import motion_dit
from vasa_jax.models.face import build_model as build_face

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


def bench(variant: str, seconds: float, repeats: int, render_batch: int | None) -> dict:
    gen, info = make_generator(variant, render_batch)
    s = gen.image_size
    rng = np.random.default_rng(0)
    portrait = (rng.random((s, s, 3)) * 255).astype(np.uint8)
    t_prep, prep = timed(lambda: gen.prepare(portrait), 1)
    out = dict(info, prepare_ms=dict(first=round(t_prep * 1e3, 1), warm=round(prep * 1e3, 2)))

    # Rendering only: decode of cached source + given motion, batches of render_batch.
    n_render = gen.render_batch * max(2, int(math.ceil(25 / gen.render_batch)))
    motion = (0.1 * rng.standard_normal((n_render, gen.motion_dim))).astype(np.float32)
    motion[:, 6] = 0.0   # log-scale 0: unit scale
    first, warm = timed(lambda: list(gen.render(motion)), repeats)
    out["render_ms_per_frame"] = round(warm / n_render * 1e3, 3)
    out["render_fps"] = round(n_render / warm, 1)
    out["render_compile_s"] = round(first - warm, 2)

    # DiT window sampling (features given), CFG audio + gaze.
    w, k, da = gen.window, gen.history, gen.motion.audio_dim
    ctl = gen.resolve(Controls())
    conds = dict(audio=jnp.zeros((1, w, da)), x_pre=jnp.zeros((1, k, gen.motion_dim)),
                 a_pre=jnp.zeros((1, k, da)), gaze=ctl.gaze, distance=ctl.distance,
                 emotion=ctl.emotion, audio_valid=np.ones((1, w), bool),
                 history_valid=np.ones((1,), bool))
    out["dit_window_ms"], out["dit_compile_s"] = {}, {}
    for steps in (10, 50):
        sampler = gen._sampler(steps, tuple(ctl.scales))
        key = jax.random.key(0)
        first, warm = timed(lambda: sampler(key, conds, ctl.scales).block_until_ready(), repeats)
        out["dit_window_ms"][str(steps)] = round(warm * 1e3, 2)
        out["dit_compile_s"][str(steps)] = round(first - warm, 2)

    # Offline: whole track, default controls (10 steps, CFG audio + gaze).
    wav = speech_like(seconds)
    n_frames = len(wav) // SAMPLES_PER_FRAME
    first, warm = timed(lambda: gen.generate(wav, Controls(seed=0)), max(1, repeats // 2))
    t0 = time.perf_counter()
    motion_only = gen.motion_offline(wav, ctl)
    motion_s = time.perf_counter() - t0
    out["offline"] = dict(seconds_of_audio=round(len(wav) / SAMPLE_RATE, 3), frames=n_frames,
                          wall_s=round(warm, 3), fps=round(n_frames / warm, 1),
                          realtime_factor=round(n_frames / FPS / warm, 2),
                          motion_only_fps=round(len(motion_only) / motion_s, 1),
                          first_call_s=round(first, 2))

    # Streaming: 40 ms chunks, consumed as fast as possible.
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
    runs = [run_stream() for _ in range(max(1, repeats // 2))]
    first_window = float(np.median([r[0] for r in runs]))
    total = float(np.median([r[2] for r in runs]))
    buffering = (w * SAMPLES_PER_FRAME + gen.features.lookahead) / SAMPLE_RATE
    out["stream"] = dict(
        chunk_ms=40, window_frames=w, first_window_compute_ms=round(first_window * 1e3, 2),
        audio_buffering_ms=round(buffering * 1e3, 1),
        first_frame_latency_ms=round((buffering + first_window) * 1e3, 1),
        fps=round(runs[0][1] / total, 1), realtime_factor=round(runs[0][1] / FPS / total, 2),
        max_buffer_samples=gen.last_stream_stats.get("max_buffer_samples"))
    out["trace_counts"] = gen.trace_counts()
    return out


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
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None,
                    help="comma list of tiny, full (default: tiny on CPU, tiny,full on GPU)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="audio length for offline/stream (default 8 tiny, 10 full)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--render-batch", type=int, default=None,
                    help="frames per decoder call (default: the DiT window)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = (args.config or ("tiny" if jax.default_backend() == "cpu" else "tiny,full")).split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        ap.error(f"unknown --config {bad}: use {', '.join(VARIANTS)}")
    result = dict(benchmark="realtime", **machine_facts(), runs={})
    for name in names:
        seconds = args.seconds or (8.0 if name == "tiny" else 10.0)
        t0 = time.perf_counter()
        try:
            result["runs"][name] = bench(name, seconds, args.repeats, args.render_batch)
        except Exception as e:  # e.g. out of memory for the full sizes: record it, go on
            detail = " ".join(str(e).split())[:300]
            result["runs"][name] = dict(error=f"{type(e).__name__}: {detail}")
        result["runs"][name]["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: result["runs"][name]}, indent=1), flush=True)
    default = ROOT / "benchmarks" / "results" / f"realtime_{device_name()}.json"
    out = pathlib.Path(args.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
