"""The `vasa-jax` command.

Subcommands: `preview` (a SynthTalk clip as mp4 + contact sheet), `synthtalk-build` (a SynthTalk
data set as tfds/array_record), `preprocess` (VoxCeleb2 or a folder of videos → the same record
layout, parallel and resumable), `generate` (portrait + speech → talking-face mp4 with a model
bundle), `export` (two training workdirs → a model bundle), `demo` (data, both training
stages, generation and metrics on CPU, from nothing), `evaluate` (VASA-1's evaluation table
for a bundle on held-out SynthTalk) and `verify` (does a video carry the
vasa_jax provenance labels: exit 0 watermark detected, 1 not detected, 2 bad input).

Every video written here is labelled (`vasa_jax.provenance`): container metadata and an
invisible watermark; `--no-watermark` leaves the frames unmarked and the metadata says so.
"""

from __future__ import annotations

import argparse
import sys


def _preview(args) -> int:
    from vasa_jax.data.synthtalk.preview import write_preview

    # A procedural render, not a model's output, but a synthetic face all the same: labelled
    # as a SynthTalk render (no checkpoint), watermarked unless --no-watermark.
    video, sheet = write_preview(args.out, identity=args.identity, seed=args.seed,
                                 seconds=args.seconds, resolution=args.resolution,
                                 emotion=args.emotion, watermark=not args.no_watermark)
    print(f"wrote {video} and {sheet}")
    return 0


def _synthtalk_build(args) -> int:
    from vasa_jax.config_util import load_config
    from vasa_jax.data.builders import prepare_synthtalk

    config = load_config(args.config, args.overrides)
    sources = prepare_synthtalk(args.data_dir, **config.to_dict())
    for split, source in sources.items():
        print(f"{split}: {len(source)} clips")
    print(f"SynthTalk data set ready under {args.data_dir}")
    return 0


def _preprocess(args) -> int:
    import logging

    from vasa_jax.config_util import load_config
    from vasa_jax.data import preprocess

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds' "custom data configuration"
    config = load_config(args.config, args.overrides)
    summary = preprocess.preprocess(config, args.input, args.data_dir, num_workers=args.workers,
                                    progress=not args.no_progress)
    print(preprocess.format_summary(summary))
    print(f"train with: --config.data.data_dir={args.data_dir} "
          f"--config.data.dataset={summary['dataset']}")
    return 0


def _numbers(text, name: str, n: int | None, hint: str) -> list[float] | None:
    from vasa_jax.errors import ConfigError

    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        values = []
    if not values or (n is not None and len(values) != n):
        raise ConfigError(f"--{name} {text!r}: expected {hint}")
    return values


def _generate(args) -> int:
    import pathlib

    from vasa_jax.errors import ConfigError
    from vasa_jax.inference import generate as G

    out = pathlib.Path(args.out)
    png = bool(args.frames_dir)
    if png and out.suffix:
        raise ConfigError(f"--frames-dir writes PNG frames into a directory: give --out without "
                          f"a suffix (not {out.name!r})")
    if not png and out.suffix.lower() not in G.VIDEO_SUFFIXES:
        raise ConfigError(f"--out {out.name!r}: use a .mp4 path (or --frames-dir with a "
                          "directory for PNG frames)")
    if args.audio is None and args.driving_video is None:
        raise ConfigError("--audio is required (a wav/flac/mp3/m4a speech track), unless "
                          "--driving-video is given")
    if args.stream and args.driving_video:
        raise ConfigError("--stream does not apply to --driving-video (reenactment is offline)")
    gaze = _numbers(args.gaze, "gaze", 2, "two numbers θ,φ in degrees, e.g. --gaze 0,5")
    distance = _numbers(args.distance, "distance", 1, "one number, e.g. --distance 3.2")
    box = _numbers(args.box, "box", 4, "four pixel numbers x0,y0,x1,y1")
    emotion = args.emotion
    if emotion is not None and ("," in emotion or emotion.strip().lstrip("-").isdigit()):
        vec = _numbers(emotion, "emotion", None, "a name (happy, ...), an index or a vector")
        emotion = int(vec[0]) if "," not in args.emotion else vec
    cfg = {}
    for item in args.cfg or []:
        name, eq, value = item.partition("=")
        vals = _numbers(value, "cfg", 1, "NAME=VALUE, e.g. --cfg emotion=0.5") if eq else None
        if not vals:
            raise ConfigError(f"--cfg {item!r}: expected NAME=VALUE, e.g. --cfg emotion=0.5")
        cfg[name.strip()] = vals[0]
    for name in ("audio", "gaze"):
        value = getattr(args, f"cfg_{name}")
        if value is not None:
            cfg[name] = value
    controls = G.Controls(gaze=gaze, distance=None if distance is None else distance[0],
                          emotion=emotion, cfg=cfg or None, steps=args.steps, seed=args.seed,
                          head_pose=args.head_pose, driving_video=args.driving_video)

    # Cheap checks first (files, audio), then the model.
    image = G.to_rgb_array(args.image)
    wav = G.load_audio(args.audio) if args.audio is not None else None
    if args.driving_video is not None and not pathlib.Path(args.driving_video).is_file():
        raise ConfigError(f"driving video not found: {args.driving_video} (check the path)")
    gen = G.Generator.from_bundle(args.checkpoint, wav2vec2_path=args.wav2vec2,
                                  render_batch=args.render_batch)
    gen.resolve(controls)
    gen.prepare(image, box=box, name=args.image)

    from tqdm import tqdm

    if args.stream:
        chunk = max(1, int(args.chunk_ms * G.SAMPLE_RATE / 1000))
        total = len(wav) // G.SAMPLES_PER_FRAME
        batches = gen.stream((wav[i:i + chunk] for i in range(0, len(wav), chunk)), controls)
    else:
        total, _, pairs = gen.iter_generate(wav, controls)
        batches = (frames for frames, _ in pairs)
    with tqdm(total=total, unit="frame", desc="generate", disable=True if args.no_progress
              else None, dynamic_ncols=True) as bar:
        def frames():
            for batch in batches:
                yield from batch
                bar.update(len(batch))

        gen.write(frames(), wav, out, png=png, watermark=not args.no_watermark)
    seconds = total / G.FPS
    print(f"wrote {out} ({total} frames, {seconds:.2f} s at {G.FPS} fps; checkpoint "
          f"{gen.bundle.checkpoint_hash[:16]}; watermark {'off' if args.no_watermark else 'on'})")
    return 0


def _demo(args) -> int:
    import logging

    from vasa_jax.demo import run_demo

    from absl import logging as absl_logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax / tfds chatter
    for name in ("absl", "orbax", "jax", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    except ImportError:
        pass
    r = run_demo(args.workdir, args.out, minutes_stage1=args.minutes_stage1,
                 minutes_stage2=args.minutes_stage2, watermark=not args.no_watermark)
    m = r["metrics"]
    mc = m["mouth_correlation"]
    print(f"wrote {r['video']}, {r['contact_sheet']} and {r['mouth_sheet']} "
          f"(timings, s: {r['timings_s']})")
    print(f"demo.mp4: audio energy vs the mouth opening read from the video "
          f"r = {r['energy_mouth_correlation']:+.2f}; vs how much its mouth window darkens "
          f"(pixels only) r = {r['energy_mouth_darkening_correlation']:+.2f}")
    print(f"held-out clips: {m['clips']}; mouth-opening correlation with the speech's ground "
          f"truth: generated video {mc['generated_video']['mean']:+.3f}, from another clip's "
          f"audio {mc['other_audio_video']['mean']:+.3f}, real latents "
          f"{mc['real_latent']['mean']:+.3f}")
    print(f"head motion: seed-to-seed |Δangle| {m['head_angle_seed_difference_deg']:.2f}°, "
          f"temporal std {m['head_angle_temporal_std_deg']:.2f}°; all figures in "
          f"{args.workdir}/demo.json")
    return 0


def _verify(args) -> int:
    import json

    from vasa_jax import provenance
    from vasa_jax.errors import ConfigError

    scales = _numbers(args.scales, "scales", None, "sizes relative to the original, e.g. 1,0.5")
    if any(s <= 0 for s in scales):
        raise ConfigError(f"--scales {args.scales!r}: expected positive size ratios, e.g. 1,0.5")
    if args.max_frames < 1:
        raise ConfigError(f"--max-frames {args.max_frames}: expected a positive frame count")
    report = provenance.verify(args.video, threshold=args.threshold, scales=scales,
                               max_frames=args.max_frames)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.detected else 1


def _evaluate(args) -> int:
    import logging
    import os

    from vasa_jax.config_util import load_config
    from vasa_jax.eval import runner

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("absl", "orbax", "jax", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    spec = args.config or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), "configs", "eval.py") + ":tiny"
    config = load_config(spec, args.overrides)
    result = runner.evaluate(args.checkpoint, args.split, args.out, steps=args.steps,
                             cfg_audio=args.cfg_audio, config=config,
                             evaluators_dir=args.evaluators, log_fn=logging.getLogger(
                                 "vasa_jax.eval").info)
    print(runner.summary(result))
    return 0


def _export(args) -> int:
    from vasa_jax.train.export import export_bundle

    digest = export_bundle(args.face_workdir, args.motion_workdir, args.out)
    print(f"wrote {args.out} (checkpoint {digest[:16]})")
    return 0


_NO_WATERMARK = ("leave the frames without the invisible watermark (the container metadata "
                 "still labels the video, and records vasa_jax_watermark=off)")


def build_parser() -> argparse.ArgumentParser:
    from vasa_jax import provenance   # numpy only: cheap

    parser = argparse.ArgumentParser(prog="vasa-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="render a SynthTalk clip to mp4 with audio + contact sheet")
    p.add_argument("--out", default="synthtalk_preview.mp4", help="output .mp4 path")
    p.add_argument("--identity", type=int, default=3, help="identity id (any integer >= 0)")
    p.add_argument("--seed", type=int, default=0, help="clip seed (speech, motion, emotion)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--resolution", type=int, default=256, help="multiple of 8 in [64, 512]")
    p.add_argument("--emotion", default=None,
                   help="neutral, happy, sad, angry or surprised (default: drawn from the seed)")
    p.add_argument("--no-watermark", action="store_true", help=_NO_WATERMARK)
    p.set_defaults(func=_preview)
    b = sub.add_parser("synthtalk-build",
                       help="write a SynthTalk data set (tfds, array_record) for training")
    b.add_argument("--config", default="configs/synthtalk.py:tiny",
                   help="config file and size, e.g. configs/synthtalk.py:small")
    b.add_argument("--data-dir", required=True, help="tfds data directory to write into")
    b.set_defaults(func=_synthtalk_build)
    r = sub.add_parser("preprocess", help="VoxCeleb2 or a folder of videos → training records "
                       "(tfds, array_record; parallel, resumable)")
    r.add_argument("--input", required=True, help="the VoxCeleb2 download folder (holding "
                   "vox2_dev_mp4 / vox2_test_mp4) or a folder of videos (ROOT/<speaker>/...)")
    r.add_argument("--data-dir", required=True, help="tfds data directory to write into "
                   "(local path or bucket path)")
    r.add_argument("--config", default="configs/preprocess.py:voxceleb2",
                   help="config file and variant, e.g. configs/preprocess.py:folder")
    r.add_argument("--workers", type=int, default=0,
                   help="worker processes (default 0: one per CPU core; 1: no workers)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_preprocess)
    g = sub.add_parser("generate", help="portrait + speech → talking-face video with a bundle")
    g.add_argument("--checkpoint", required=True,
                   help="model bundle folder (from `vasa-jax export` / export_bundle)")
    g.add_argument("--image", required=True, help="portrait: PNG, JPEG or WebP")
    g.add_argument("--audio", default=None, help="speech: wav/flac/mp3/m4a, any rate, mono/stereo")
    g.add_argument("--out", required=True,
                   help="output .mp4 (H.264 + the audio), or a directory with --frames-dir")
    g.add_argument("--frames-dir", action="store_true",
                   help="write PNG frames 000000.png, ... into the --out directory instead")
    g.add_argument("--box", default=None, help="face box x0,y0,x1,y1 in pixels "
                   "(default: the centre square of the image)")
    g.add_argument("--gaze", default=None, help="main gaze θ,φ in degrees, e.g. --gaze=-5,3 "
                   "(default: the training-set mean)")
    g.add_argument("--distance", default=None,
                   help="head-to-camera distance (default: the training-set mean)")
    g.add_argument("--emotion", default=None,
                   help="neutral, happy, sad, angry or surprised; an index; or a vector a,b,...")
    g.add_argument("--steps", type=int, default=None,
                   help="diffusion steps (default: the bundle's; VASA-1 uses 50, 10 is ~5x faster)")
    g.add_argument("--cfg-audio", type=float, default=None, help="audio guidance scale λ_A")
    g.add_argument("--cfg-gaze", type=float, default=None, help="gaze guidance scale λ_g")
    g.add_argument("--cfg", action="append", metavar="NAME=VALUE",
                   help="guidance scale of any condition (audio, gaze, distance, emotion, "
                   "history); repeatable")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--head-pose", default=None, help="pose sequence to follow: .npy or .csv, "
                   "one row per 25 fps frame: yaw,pitch,roll (degrees) or the 7 z_pose values")
    g.add_argument("--driving-video", default=None,
                   help="reenactment: take the motion from this video instead of the audio")
    g.add_argument("--stream", action="store_true",
                   help="generate online, window by window from audio chunks (bounded memory)")
    g.add_argument("--chunk-ms", type=float, default=100.0, help="--stream audio chunk length")
    g.add_argument("--wav2vec2", default=None,
                   help="local Hugging Face Wav2Vec2 directory (bundles trained on Wav2Vec2)")
    g.add_argument("--render-batch", type=int, default=None,
                   help="frames per decoder call (default: the motion window)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-watermark", action="store_true", help=_NO_WATERMARK)
    g.set_defaults(func=_generate)
    d = sub.add_parser("demo", help="train tiny stage 1 + 2 on SynthTalk (CPU, minutes) and "
                       "animate a held-out face with held-out speech")
    d.add_argument("--workdir", default="vasa_demo", help="where data, checkpoints and metrics "
                   "go (a rerun resumes)")
    d.add_argument("--out", default="demo.mp4", help="output video (+ .png contact sheet)")
    d.add_argument("--minutes-stage1", type=float, default=8.0,
                   help="stage-1 training budget in minutes")
    d.add_argument("--minutes-stage2", type=float, default=2.0,
                   help="stage-2 training budget in minutes")
    d.add_argument("--no-watermark", action="store_true", help=_NO_WATERMARK)
    d.set_defaults(func=_demo)
    ev = sub.add_parser("evaluate", help="VASA-1's metrics (Sc/Sd, CAPP, ΔP, FVD25) and "
                        "SynthTalk control accuracy for a bundle, on held-out clips")
    ev.add_argument("--checkpoint", required=True, help="model bundle folder (vasa-jax export)")
    ev.add_argument("--split", default="test", choices=("test", "train"),
                    help="identities to evaluate on (default: the held-out test identities)")
    ev.add_argument("--steps", type=int, default=None,
                    help="diffusion steps of the 'ours' row (default: the bundle's)")
    ev.add_argument("--cfg-audio", type=float, default=None,
                    help="audio guidance scale λ_A of the 'ours' row (default: the bundle's)")
    ev.add_argument("--config", default=None,
                    help="eval config, e.g. configs/eval.py:tiny (the default); "
                    "--config.runner.clips=4 etc. override fields")
    ev.add_argument("--evaluators", default=None, help="folder of the trained SyncNet, oracle "
                    "and CAPP (missing ones are trained there; default OUT/evaluators)")
    ev.add_argument("--out", default=None, help="output folder (default CHECKPOINT/eval)")
    ev.set_defaults(func=_evaluate)
    e = sub.add_parser("export", help="stage-1 + stage-2 workdirs → an inference bundle")
    e.add_argument("--face-workdir", required=True)
    e.add_argument("--motion-workdir", required=True)
    e.add_argument("--out", required=True, help="bundle folder to write")
    e.set_defaults(func=_export)
    v = sub.add_parser("verify", help="check a video for the vasa_jax provenance labels "
                       "(exit 0: watermark detected, 1: not detected, 2: bad input)")
    v.add_argument("video", help="any video file (mp4, mov, mkv, webm, ...)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--threshold", type=float, default=provenance.DEFAULT_THRESHOLD,
                   help="detection score threshold (default: %(default)s; see docs/provenance.md "
                   "for the false-alarm rate it gives)")
    v.add_argument("--scales", default="1,0.5",
                   help="sizes relative to the generated video to try (default 1,0.5: as "
                   "written and half size); each one adds false alarms")
    v.add_argument("--max-frames", type=int, default=provenance.DEFAULT_MAX_FRAMES,
                   help="frames to read from the start (default: %(default)s)")
    v.set_defaults(func=_verify)
    return parser


def main(argv=None) -> int:
    # `--config.field=value` overrides are collected here; argparse sees the rest.
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    args.overrides = overrides
    from vasa_jax.data.media import MediaError
    from vasa_jax.errors import ConfigError

    try:
        return args.func(args)
    except (ConfigError, MediaError) as err:
        print(f"vasa-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
