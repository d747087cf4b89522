"""The SynthTalk oracle's held-out accuracy (docs/RESULTS.md, evaluators): trains an oracle with
configs/eval.py:tiny settings (`--config.oracle.*` overrides) into OUT/ and writes OUT.json;
with --measure DIR instead, measures an already trained oracle on the same held-out clips.

    python benchmarks/oracle_heldout.py OUT.json [--config.oracle.steps=1500 ...]
    python benchmarks/oracle_heldout.py OUT.json --measure EVAL/oracle"""

import json
import os
import sys
import time


def main(argv):
    from vasa_jax.config_util import load_config
    from vasa_jax.eval import oracle

    out = os.path.abspath(argv[1])
    rest = argv[2:]
    measure = None
    if rest[:1] == ["--measure"]:
        measure, rest = rest[1], rest[2:]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(here, "configs", "eval.py") + ":tiny", rest).oracle.to_dict()
    t = time.perf_counter()
    if measure:
        o = oracle.Oracle.load(measure)
        metrics = dict(held_out=oracle.oracle_accuracy(o, oracle.held_out_clips(cfg)),
                       trained=o.meta.get("train"))
    else:
        metrics = oracle.train_oracle(cfg, os.path.splitext(out)[0], log_fn=lambda h: print(
            time.strftime("%H:%M:%S"), h, flush=True))
    result = dict(config=cfg, measured=measure, seconds=round(time.perf_counter() - t, 1),
                  **metrics)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    h = metrics["held_out"]
    print({k: [round(x, 3) for x in h[k]["r2"]] for k in oracle.TARGETS})
    print("gaze deg", round(h["gaze"]["angular_error_deg"], 2), "emotion", h["emotion"],
          "identity", round(h["identity"]["accuracy"], 3), "s", result["seconds"])


if __name__ == "__main__":
    main(sys.argv)
