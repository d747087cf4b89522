"""Input-pipeline throughput: stage-1 frame pairs/s and stage-2 windows/s on a SynthTalk set.

    python benchmarks/pipeline_throughput.py                      # temp data set, default out
    python benchmarks/pipeline_throughput.py --data-dir /tmp/tfds --seconds 10

Builds (or reuses, with --data-dir) a small data set — by default 128², 8 train identities × 2
clips × 50 frames — then times each pipeline in-process (grain read threads) and, unless
--no-mp, with `mp_prefetch` worker processes. Stage 1 is also timed with
every decoded clip cached (`cache_mb`, after one epoch has filled the cache). Reports
steady-state rates (after the first batch, or the first epoch for the cached run), the time to
them, and this process's CPU per batch (what the loader takes from a train step sharing the
cores; mp_prefetch workers not counted); writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from _machine import cpu_model


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("jax", "jaxlib", "grain", "tensorflow-datasets", "array-record", "numpy",
                "pillow", "orbax-checkpoint"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": sys.version.split()[0],
        "versions": _versions(),
    }


def time_pipeline(make, batch_size: int, seconds: float, min_batches: int,
                  warmup_batches: int = 1) -> dict:
    """Steady-state rate of `make()`'s iterator: batches after the first `warmup_batches`,
    for >= `seconds`."""
    t0 = time.perf_counter()
    it = iter(make())
    try:
        for _ in range(warmup_batches):
            next(it)
        first = time.perf_counter() - t0
        n, t1, c1 = 0, time.perf_counter(), time.process_time()
        while n < min_batches or time.perf_counter() - t1 < seconds:
            next(it)
            n += 1
        dt, cpu = time.perf_counter() - t1, time.process_time() - c1
    finally:
        it.close()
    # This process's CPU (grain's read threads included, mp_prefetch workers not): what the
    # loader takes from a train step that shares the cores.
    return {"batches": n, "seconds": round(dt, 3), "first_batches_s": round(first, 3),
            "warmup_batches": warmup_batches,
            "items_per_s": round(n * batch_size / dt, 2),
            "batches_per_s": round(n / dt, 3),
            "process_cpu_ms_per_batch": round(cpu / n * 1e3, 3)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="tfds data dir (default: a temp dir, removed)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "pipeline_throughput.json"))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--clips", type=int, default=2, help="clips per identity")
    p.add_argument("--frames", type=int, default=50, help="frames per clip")
    p.add_argument("--stage1-batch", type=int, default=8)
    p.add_argument("--stage2-batch", type=int, default=16)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0, help="timing per configuration")
    p.add_argument("--min-batches", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="mp_prefetch worker processes")
    p.add_argument("--no-mp", action="store_true", help="skip the mp_prefetch runs")
    args = p.parse_args(argv)

    from vasa_jax.data import builders, pipelines

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="vasa_pipeline_bench_")
        data_dir = tmp
    try:
        fields = dict(resolution=args.resolution, num_frames=args.frames,
                      num_train_identities=args.identities, num_test_identities=1,
                      clips_per_identity=args.clips, seed=0)
        t0 = time.perf_counter()
        sources = builders.prepare_synthtalk(data_dir, **fields)
        prepare_s = time.perf_counter() - t0
        train = sources["train"]
        name = builders.SynthTalkConfig(**fields).name
        version_dir = os.path.join(data_dir, "synthtalk", name,
                                   str(builders.SynthTalk.VERSION))
        train_bytes = sum(os.path.getsize(os.path.join(version_dir, f))
                          for f in os.listdir(version_dir) if f.startswith("synthtalk-train"))

        # Raw costs: reading a record, decoding one PNG frame.
        t0 = time.perf_counter()
        for i in range(len(train)):
            rec = train[i]
        read_ms = (time.perf_counter() - t0) / len(train) * 1e3
        t0 = time.perf_counter()
        builders.decode_frames(rec["frames"])
        decode_ms = (time.perf_counter() - t0) / args.frames * 1e3

        shard = dict(shard_index=0, shard_count=1)
        runs = []
        modes = [("in_process", dict(mp_prefetch=0, read_threads=1)),
                 ("in_process", dict(mp_prefetch=0, read_threads=4))]
        if not args.no_mp:
            modes.append(("mp_prefetch", dict(mp_prefetch=args.workers, read_threads=2)))
        # Stage 1 with every decoded clip cached (timed after one epoch has filled the cache).
        cached = ("in_process_cached", dict(mp_prefetch=0, read_threads=1, cache_mb=4096.0))
        modes.append(cached)
        for mode, kw in modes:
            for stage in ((1,) if mode == cached[0] else (1, 2)):
                if stage == 1:
                    bs = args.stage1_batch

                    def make(kw=kw, bs=bs):
                        return pipelines.stage1_dataset(train, batch_size=bs, seed=0, **shard, **kw)
                else:
                    bs = args.stage2_batch

                    def make(kw=kw, bs=bs):
                        return pipelines.stage2_dataset(train, window=args.window,
                                                        history=args.history, batch_size=bs,
                                                        seed=0, windows_per_clip=8, **shard, **kw)
                warm = -(-len(train) // bs) + 1 if "cache_mb" in kw else 1
                try:
                    r = time_pipeline(make, bs, args.seconds, args.min_batches, warm)
                    r["error"] = None
                except Exception as e:  # noqa: BLE001 — recorded, the other runs go on
                    r = {"error": f"{type(e).__name__}: {e}"}
                r.update(stage=stage, mode=mode, batch_size=bs, **kw,
                         unit="frame pairs/s" if stage == 1 else "windows/s")
                print(json.dumps(r), flush=True)
                runs.append(r)

        result = {
            "benchmark": "pipeline_throughput",
            "machine": machine_info(),
            "dataset": dict(fields, config_name=name, train_records=len(train),
                            prepare_s=round(prepare_s, 2),
                            prepare_clips_per_s=round((len(train) + 1) / prepare_s, 2),
                            train_bytes=train_bytes, record_read_ms=round(read_ms, 3),
                            png_decode_ms_per_frame=round(decode_ms, 3)),
            "stage2": {"window": args.window, "history": args.history},
            "runs": runs,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
