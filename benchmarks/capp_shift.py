"""CAPP's shift check (docs/evaluation.md): trains CAPP with the given settings and writes its
held-out validation — mean score by audio–pose shift (−4…+4 frames) and by pose-variation scale.

    python benchmarks/capp_shift.py OUT.json [--config.capp.steps=600 ...]

Settings come from configs/eval.py:tiny (`--config.capp.*` overrides); the network is saved
next to the JSON (OUT.json → OUT/ folder)."""

import json
import os
import sys
import time


def main(argv):
    from vasa_jax.config_util import load_config
    from vasa_jax.eval import capp

    out = os.path.abspath(argv[1])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(here, "configs", "eval.py") + ":tiny", argv[2:])
    t = time.perf_counter()
    metrics = capp.train_capp(cfg.capp.to_dict(), os.path.splitext(out)[0],
                              log_fn=lambda h: print(time.strftime("%H:%M:%S"), h, flush=True))
    held = metrics["held_out"]
    result = dict(config=cfg.capp.to_dict(), seconds=round(time.perf_counter() - t, 1),
                  **metrics)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    print("shift", {k: round(v, 4) for k, v in held["score_by_shift"].items()})
    print("scale", {k: round(v, 4) for k, v in held["score_by_scale"].items()})
    print("matched_vs_other", held["matched_vs_other"], "seconds", result["seconds"])


if __name__ == "__main__":
    main(sys.argv)
