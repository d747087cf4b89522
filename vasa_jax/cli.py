"""The `vasa-jax` command.

Subcommands: `preview` (a SynthTalk clip as mp4 + contact sheet), `synthtalk-build` (a SynthTalk
data set as tfds/array_record). Training, `generate` and
`demo` join as their stages land.
"""

from __future__ import annotations

import argparse
import sys


def _preview(args) -> int:
    from vasa_jax.data.synthtalk.preview import write_preview

    video, sheet = write_preview(args.out, identity=args.identity, seed=args.seed,
                                 seconds=args.seconds, resolution=args.resolution,
                                 emotion=args.emotion)
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


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(func=_preview)
    b = sub.add_parser("synthtalk-build",
                       help="write a SynthTalk data set (tfds, array_record) for training")
    b.add_argument("--config", default="configs/synthtalk.py:tiny",
                   help="config file and size, e.g. configs/synthtalk.py:small")
    b.add_argument("--data-dir", required=True, help="tfds data directory to write into")
    b.set_defaults(func=_synthtalk_build)
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
