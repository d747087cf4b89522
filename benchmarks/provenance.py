"""Provenance watermark: detection rate after each transformation, false alarms, PSNR, cost.

    python benchmarks/provenance.py --out docs/results/provenance.json

Marked clips: SynthTalk renders and "real-looking footage" (the two photographs scikit-learn
ships, china.jpg and flower.jpg, under random crops, zooms and camera pans; 1/f-spectrum
colour textures when scikit-learn is absent), 256² (plus a few at 512², the generator's
size), 60 frames (2.4 s) at 25 fps, written as the generator writes them (H.264 CRF 18).
Each goes through every transformation with the ffmpeg command, random parameters per clip:
  crf28                H.264 re-encode at CRF 28
  half                 downscale to half size (ffmpeg's default bicubic), CRF 23
  crop10               crop to 90% of width and height at a random offset, CRF 23
  brightness_contrast  eq=brightness ±0.15, contrast 0.7–1.4, CRF 23
  cut2s                a 2-second piece from a random start, CRF 23
  combined             all of the above at once (not a target: reported for information)
The same clean clips go through the same transformations for the false alarms on encoded
video; many more unmarked images go straight to the detector (photo crops, SynthTalk frame
averages, 1/f textures, noise, flat graphics), since the detector sees only the average luma.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vasa_jax import provenance as P
from vasa_jax.data import media
from vasa_jax.data.synthtalk import generate_clip
from _machine import cpu_model

FPS = 25
TRANSFORMS = ["none", "crf28", "half", "crop10", "brightness_contrast", "cut2s", "combined"]
TARGETS = ["crf28", "half", "crop10", "brightness_contrast", "cut2s"]
CKPT = "5e7c0d3a" + "9" * 56     # any checkpoint hash: the payload carries its first 24 bits


# ----------------------------------------------------------------------------------------------
# Footage.


def _photos() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    return [np.asarray(img) for img in load_sample_images().images]


def _texture(rng: np.random.Generator, size: int, exponent: float = 1.0) -> np.ndarray:
    """A colour image with a 1/f^exponent amplitude spectrum (natural-image statistics)."""
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    f[0, 0] = 1.0
    layers = [np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / f ** exponent))
              for _ in range(3)]
    img = np.stack(layers, -1)
    mix = rng.normal(0, 0.3, (3, 3)) + np.eye(3)      # correlated channels, like real colour
    img = (img - img.mean()) / img.std() @ mix
    return np.clip(img * rng.uniform(25, 60) + rng.uniform(80, 170), 0, 255)


def natural_clip(rng: np.random.Generator, photos: list[np.ndarray], t: int,
                 size: int) -> np.ndarray:
    """A camera pan + slow zoom over a photograph (or a 1/f texture): uint8 [t, size, size, 3]."""
    if photos:
        src = photos[rng.integers(len(photos))].astype(np.float32)
        if rng.random() < 0.5:
            src = src[:, ::-1]
    else:
        src = _texture(rng, 640).astype(np.float32)
    zoom0 = rng.uniform(0.45, 0.8) * min(src.shape[:2]) / size
    zoom1 = zoom0 * rng.uniform(0.85, 1.0)
    span = size * max(zoom0, zoom1)
    y0 = rng.uniform(0, src.shape[0] - span)
    x0 = rng.uniform(0, src.shape[1] - span)
    vy, vx = rng.uniform(-0.4, 0.4, 2) * (src.shape[0] - span - 1) / max(t, 1)
    img = Image.fromarray(np.clip(src, 0, 255).astype(np.uint8))
    frames = []
    for i in range(t):
        z = zoom0 + (zoom1 - zoom0) * i / max(t - 1, 1)
        y = float(np.clip(y0 + vy * i, 0, src.shape[0] - size * z))
        x = float(np.clip(x0 + vx * i, 0, src.shape[1] - size * z))
        box = (x, y, x + size * z, y + size * z)
        frames.append(np.asarray(img.resize((size, size), Image.BICUBIC, box=box)))
    return np.stack(frames)


def synthtalk_clip(rng: np.random.Generator, t: int, size: int) -> np.ndarray:
    return generate_clip(identity=int(rng.integers(0, 1000)), seed=int(rng.integers(0, 1000)),
                         num_frames=t, resolution=size).frames


# ----------------------------------------------------------------------------------------------
# Transformations (the ffmpeg command).


def _ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    cmd = ["ffmpeg", "-nostdin", "-y", "-v", "error", *args[:args.index("--")], "-i", str(src),
           *args[args.index("--") + 1:], "-pix_fmt", "yuv420p", str(dst)]
    subprocess.run(cmd, check=True)
    return dst


def transform(name: str, src: Path, dst: Path, size: int, rng: np.random.Generator) -> Path:
    seconds = 60 / FPS
    cw = ch = int(size * 0.9) // 2 * 2
    crop = f"crop={cw}:{ch}:{rng.integers(0, size - cw + 1)}:{rng.integers(0, size - ch + 1)}"
    eq = f"eq=brightness={rng.uniform(-0.15, 0.15):.3f}:contrast={rng.uniform(0.7, 1.4):.3f}"
    start = f"{rng.uniform(0, seconds - 2.0):.2f}"
    x264 = ["-c:v", "libx264", "-crf"]
    if name == "none":
        return src
    if name == "crf28":
        return _ffmpeg(src, dst, "--", *x264, "28")
    if name == "half":
        return _ffmpeg(src, dst, "--", "-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2", *x264, "23")
    if name == "crop10":
        return _ffmpeg(src, dst, "--", "-vf", crop, *x264, "23")
    if name == "brightness_contrast":
        return _ffmpeg(src, dst, "--", "-vf", eq, *x264, "23")
    if name == "cut2s":
        return _ffmpeg(src, dst, "-ss", start, "--", "-t", "2", *x264, "23")
    if name == "combined":
        vf = f"{crop},scale=trunc(iw/4)*2:trunc(ih/4)*2,{eq}"
        return _ffmpeg(src, dst, "-ss", start, "--", "-t", "2", "-vf", vf, *x264, "28")
    raise ValueError(name)


# ----------------------------------------------------------------------------------------------
# Unmarked images for the null distribution (the detector's input is the average luma).


def null_images(rng: np.random.Generator, n: int, photos: list[np.ndarray],
                synth_means: list[np.ndarray]):
    """Yields (source, luma float [H, W]) — n of them, cycling through the sources."""
    kinds = ["photo" if photos else "texture", "synthtalk", "texture", "noise", "graphics"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        size = int(rng.choice([128, 192, 256, 320, 384]))
        if kind == "photo":
            src = photos[rng.integers(len(photos))]
            zoom = rng.uniform(0.5, min(src.shape[:2]) / size)
            crop = int(size * zoom)
            y = rng.integers(0, src.shape[0] - crop + 1)
            x = rng.integers(0, src.shape[1] - crop + 1)
            img = Image.fromarray(src[y:y + crop, x:x + crop]).resize((size, size), Image.BICUBIC)
            luma = np.asarray(img.convert("L"), np.float64)
        elif kind == "synthtalk":
            m = synth_means[rng.integers(len(synth_means))]
            k = int(rng.integers(0, 4))
            luma = np.rot90(m, k)
            if rng.random() < 0.5:
                c = int(rng.integers(8, 48))
                luma = luma[c:, c // 2:]
        elif kind == "texture":
            luma = _texture(rng, size, exponent=rng.uniform(0.7, 1.6)) @ [0.299, 0.587, 0.114]
        elif kind == "noise":   # the mean of k frames of uniform noise
            k = int(rng.integers(1, 60))
            luma = rng.random((size, size)) * 255 / math.sqrt(k) + 128
        else:
            img = Image.new("L", (size, size), int(rng.integers(0, 256)))
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(3, 30))):
                box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
                shape = [int(box[0][0]), int(box[1][0]), int(box[0][1]) + 1, int(box[1][1]) + 1]
                fill = int(rng.integers(0, 256))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(shape, fill=fill)
                draw.text((int(rng.integers(0, size)), int(rng.integers(0, size))), "vasa 2026",
                          fill=int(rng.integers(0, 256)))
            luma = np.asarray(img, np.float64)
        yield kind, luma


# ----------------------------------------------------------------------------------------------
# Measurements.


def embed_cost(size: int, frames: int = 100) -> dict:
    rng = np.random.default_rng(0)
    clip = natural_clip(rng, _photos(), 8, size)
    clip = np.concatenate([clip] * (frames // len(clip) + 1))[:frames].copy()
    mark = P.Watermarker(P.Payload.for_checkpoint(CKPT))
    mark(clip[0])                                   # compile
    cpu, wall = [], []
    for f in clip:
        c0, t0 = time.process_time(), time.perf_counter()
        mark(f)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    ms_cpu = 1e3 * float(np.median(cpu))
    ms_wall = 1e3 * float(np.median(wall))
    return dict(size=size, frames=frames, ms_per_frame_cpu=ms_cpu, ms_per_frame_wall=ms_wall,
                share_of_40ms_budget=ms_wall / 40.0)


def summarise(scores: list[float], hits: list[bool]) -> dict:
    n, k = len(hits), int(sum(hits))
    # One-sided 95% Clopper-Pearson bound: the lowest rate that makes k of n likely enough.
    if k == n:
        lower = 0.05 ** (1 / n) if n else 0.0
    else:
        from scipy import stats

        lower = float(stats.beta.ppf(0.05, k, n - k + 1)) if k else 0.0
    s = np.asarray(scores)
    return dict(n=n, detected=k, rate=k / n if n else None, rate_lower_95=lower,
                score_min=float(s.min()), score_p5=float(np.percentile(s, 5)),
                score_median=float(np.median(s)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/provenance.json")
    parser.add_argument("--clips", type=int, default=24,
                        help="marked clips of each kind (SynthTalk, footage)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--large-clips", type=int, default=6,
                        help="extra marked clips at 512² (the generator's size), both kinds")
    parser.add_argument("--null-images", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("benchmarks/provenance.py: error: the ffmpeg command is not installed "
                 "(apt-get install ffmpeg); it makes the transformations")
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    photos = _photos()
    label = P.Provenance(checkpoint_hash=CKPT)
    payload = label.payload
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True,
                                    text=True).stdout.splitlines()[0]
    results: dict = {
        "machine": {"platform": platform.platform(), "cpu": cpu_model(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "ffmpeg": ffmpeg_version,
                    "note": "shared with a training job (both cores busy): timings are "
                            "upper bounds"},
        "config": dict(clips_per_kind=args.clips, size=args.size, frames=60, fps=FPS,
                       threshold=P.DEFAULT_THRESHOLD, scales=list(P.SCALES), tile=P.TILE,
                       band_cycles_per_tile=list(P.BAND), strength=P.STRENGTH,
                       footage="sklearn sample photographs (china.jpg, flower.jpg), panned "
                       "and zoomed" if photos else "1/f colour textures, panned and zoomed"),
    }
    import jax

    results["machine"]["jax"] = jax.__version__
    results["embed_cost"] = {f"{s}x{s}": embed_cost(s) for s in (256, 512)}
    print(f"embed: {results['embed_cost']['512x512']}", flush=True)

    marked_rows, null_rows, psnrs, synth_means, detect_s = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="vasa_prov_") as tmp:
        tmp = Path(tmp)
        specs = [args.size] * (2 * args.clips) + [512] * args.large_clips
        for i, size in enumerate(specs):
            kind = "synthtalk" if i % 2 == 0 else "footage"
            clean = (synthtalk_clip(rng, 60, size) if kind == "synthtalk"
                     else natural_clip(rng, photos, 60, size))
            if kind == "synthtalk" and size == args.size:
                synth_means.append(clean.astype(np.float64).mean(0) @ [0.299, 0.587, 0.114])
            marked = np.stack(list(label.mark(clean)))
            psnrs.append(dict(kind=kind, size=size, psnr=P.psnr(marked, clean)))
            for tag, frames in (("marked", marked), ("clean", clean)):
                src = media.write_video(tmp / f"{tag}.mp4", frames, fps=FPS)
                seed = int(rng.integers(1 << 31))
                for name in TRANSFORMS:
                    path = transform(name, src, tmp / f"{tag}_{name}.mp4", size,
                                     np.random.default_rng(seed))
                    t0 = time.perf_counter()
                    d = P.detect_file(path)
                    detect_s.append(time.perf_counter() - t0)
                    row = dict(clip=i, kind=kind, size=size, transform=name, detected=d.detected,
                               score=d.score, payload_ok=d.payload == payload and d.payload_valid,
                               payload_valid=d.payload_valid, scale=d.scale)
                    (marked_rows if tag == "marked" else null_rows).append(row)
            done = [r for r in marked_rows if r["clip"] == i]
            print(f"clip {i} ({kind}, {size}²): psnr {psnrs[-1]['psnr']:.2f}; " + " ".join(
                f"{r['transform']}:{r['score']:.1f}{'+' if r['payload_ok'] else '-'}"
                for r in done),
                flush=True)

    results["psnr_db"] = dict(min=min(p["psnr"] for p in psnrs),
                              mean=float(np.mean([p["psnr"] for p in psnrs])),
                              per_kind={k: min(p["psnr"] for p in psnrs if p["kind"] == k)
                                        for k in ("synthtalk", "footage")})
    results["detect_seconds_per_clip"] = float(np.median(detect_s))
    results["detection"], results["detection_512"] = {}, {}
    for key, size in (("detection", args.size), ("detection_512", 512)):
        for name in TRANSFORMS:
            rows = [r for r in marked_rows if r["transform"] == name and r["size"] == size]
            if not rows:
                continue
            s = summarise([r["score"] for r in rows], [r["detected"] for r in rows])
            s["payload_correct"] = sum(r["payload_ok"] for r in rows)
            s["per_kind"] = {k: sum(r["detected"] for r in rows if r["kind"] == k)
                             for k in ("synthtalk", "footage")}
            s["target"] = name in TARGETS
            results[key][name] = s
    results["scores"] = [dict(r, score=round(r["score"], 2)) for r in marked_rows]

    enc_null = {}
    for name in TRANSFORMS:
        rows = [r for r in null_rows if r["transform"] == name]
        enc_null[name] = dict(n=len(rows), false_detections=sum(r["detected"] for r in rows),
                              score_max=max(r["score"] for r in rows))
    t0 = time.perf_counter()
    by_kind: dict = {}
    examples: list = []
    for kind, luma in null_images(rng, args.null_images, photos, synth_means):
        d = P.detect_mean(luma)
        by_kind.setdefault(kind, []).append((d.score, d.detected, d.payload_valid and
                                             d.payload.kind in P.KINDS))
        if d.detected:
            examples.append(dict(source=kind, score=d.score, size=list(luma.shape),
                                 payload=d.payload.to_bytes().hex()))
    scores = np.array([s for v in by_kind.values() for s, _, _ in v])
    false = sum(f for v in by_kind.values() for _, f, _ in v)
    n_null = len(scores) + len(null_rows)
    fp_all = false + sum(r["detected"] for r in null_rows)
    results["false_positives"] = {
        "encoded_clips": enc_null,
        "images": {
            "n": int(len(scores)), "false_detections": int(false),
            "score_mean": float(scores.mean()), "score_sd": float(scores.std()),
            "score_max": float(scores.max()), "score_p99_9": float(np.percentile(scores, 99.9)),
            "valid_payload_of_known_kind": int(sum(p for v in by_kind.values() for _, _, p in v)),
            "per_source": {k: dict(n=len(v), false_detections=int(sum(f for _, f, _ in v)),
                                   score_max=float(max(s for s, _, _ in v)))
                           for k, v in by_kind.items()},
            "false_detection_examples": examples,
            "seconds": time.perf_counter() - t0,
        },
        "total": dict(n=n_null, false_detections=int(fp_all), rate=fp_all / n_null,
                      rate_upper_95=(1 - 0.05 ** (1 / n_null)) if fp_all == 0 else None),
    }
    # The score's null tail (Gumbel fit to the maxima): the false-alarm rate the default
    # threshold gives beyond what the trials above can show directly.
    beta = scores.std() * math.sqrt(6) / math.pi
    mu = scores.mean() - 0.5772 * beta
    results["false_positives"]["gumbel_fit"] = dict(
        mu=float(mu), beta=float(beta),
        rate_at_threshold=float(1 - math.exp(-math.exp(-(P.DEFAULT_THRESHOLD - mu) / beta))))
    results["total_seconds"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    for name, s in [*results["detection"].items(),
                    *((f"{k} (512²)", v) for k, v in results["detection_512"].items())]:
        print(f"{name:20s} detected {s['detected']}/{s['n']} "
              f"payload {s['payload_correct']}/{s['n']}"
              f" score min {s['score_min']:.1f} median {s['score_median']:.1f}")
    print(f"false positives: {fp_all}/{n_null}; PSNR min {results['psnr_db']['min']:.2f} dB; "
          f"wrote {args.out} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
