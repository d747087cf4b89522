"""SynthTalk generation speed on one CPU core: rendered frames/s and synthesised audio.

    python benchmarks/synthtalk_speed.py --out benchmarks/results/synthtalk_speed.json
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from vasa_jax.data import synthtalk  # noqa: E402
from vasa_jax.data.synthtalk.clip import render_frames  # noqa: E402
from _machine import cpu_model  # noqa: E402


def _time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/synthtalk_speed.json")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--resolutions", default="64,128,256,512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    results = {"machine": {"platform": platform.platform(), "cpu": cpu_model(),
                           "python": platform.python_version(), "cores_used": 1,
                           "numpy": np.__version__}, "render": {}, "identities": 4}
    specs = [synthtalk.ClipSpec(identity=i, seed=i, num_frames=args.frames) for i in range(4)]
    factors = [synthtalk.sample_factors(s) for s in specs]

    t_factors = _time(lambda: [synthtalk.sample_factors(s) for s in specs], args.repeats)
    audio_seconds = 4 * args.frames / synthtalk.FPS
    results["speech_and_motion"] = {"seconds_of_clip_per_second": audio_seconds / t_factors}
    for res in (int(r) for r in args.resolutions.split(",")):
        def run():
            for idn, emo, _, f in factors:
                render_frames(idn, f, emo, res)
        t = _time(run, args.repeats if res <= 256 else 1)
        fps = 4 * args.frames / t
        results["render"][f"{res}x{res}"] = {"frames_per_second": fps}
        print(f"{res}x{res}: {fps:.1f} frames/s on one core")
    print(f"speech + motion: {results['speech_and_motion']['seconds_of_clip_per_second']:.0f}"
          " s of clip per second")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
