"""Config files with `:arg` variants and `--config.field=value` overrides."""

from pathlib import Path

import pytest

from vasa_jax.config_util import load_config
from vasa_jax.errors import ConfigError

SYNTH = str(Path(__file__).resolve().parent.parent / "configs" / "synthtalk.py")


def test_variants_and_overrides():
    tiny = load_config(f"{SYNTH}:tiny")
    small = load_config(f"{SYNTH}:small")
    assert tiny.resolution < small.resolution
    cfg = load_config(f"{SYNTH}:tiny", ["--config.resolution=128", "--config.seed=3"])
    assert cfg.resolution == 128 and cfg.seed == 3 and cfg.num_frames == tiny.num_frames


@pytest.mark.parametrize("spec, overrides, needle", [
    ("nope.py:tiny", [], "not found"),
    (f"{SYNTH}:huge", [], "huge"),
    (f"{SYNTH}:tiny", ["--config.reslution=64"], "reslution"),
    (f"{SYNTH}:tiny", ["--config.resolution=abc"], "resolution"),
    (f"{SYNTH}:tiny", ["--config.resolution"], "field=value"),
])
def test_bad_configs_one_line(spec, overrides, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        load_config(spec, overrides)
    assert "\n" not in str(err.value)


def test_set_fields_sets_dotted_paths():
    import ml_collections

    from vasa_jax.config_util import set_fields

    cfg = ml_collections.ConfigDict(dict(steps=1, loss=dict(l1=1.0, gan=0.1)))
    assert set_fields(cfg, {"steps": 4, "loss.gan": 0.0}) is cfg
    assert cfg.steps == 4 and cfg.loss.gan == 0.0 and cfg.loss.l1 == 1.0
