"""The evaluation suite: the runner and the three evaluation networks it trains on SynthTalk.

    vasa-jax evaluate --checkpoint BUNDLE --split test [--steps 10] [--cfg-audio 0.5] \
        [--config configs/eval.py:tiny] [--evaluators DIR] [--out DIR]

`tiny` is the CPU run behind docs/RESULTS.md (64² SynthTalk, evaluators trained in minutes);
`test` is the seconds-scale variant the tests use. Evaluators missing from `--evaluators DIR`
are trained with the settings below and saved there (SyncNet, the oracle, CAPP).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name not in ("tiny", "test"):
        raise ValueError(f"unknown eval variant {name!r}: choose tiny or test")
    c = ml_collections.ConfigDict()
    c.variant = name
    # The runner: held-out clips (fresh speech of the split's identities), 3 samples per input.
    c.runner = ml_collections.ConfigDict(dict(
        clips=8, frames=100, samples=3, seed=0,
        cfg_ablation=(0.0, 0.5, 1.0, 2.0), steps_ablation=(10, 50),
        ablation=True, fvd=True, fvd_clips_per_video=1, capp_hop=25))
    c.syncnet = ml_collections.ConfigDict(dict(
        width=0.25, embed_dim=128, image_size=64, crop="lower", resolution=64, clips=96,
        frames=50, steps=600, batch=32, lr=2e-3, max_shift=5, test_clips=8, seed=0))
    # The oracle: every training frame has its own pose/gaze/mouth/blink moment (from `tracks`
    # unrendered clips) and its own emotion, on many faces; photometric augmentation.
    c.oracle = ml_collections.ConfigDict(dict(
        image_size=64, channels=(32, 64, 96, 128), blocks=2, hidden=256, id_dim=64,
        resolution=64, identities=4000, frames_per_identity=6, tracks=96, track_frames=250,
        blink_fraction=0.15, augment=True, test_identities=24, test_frames=25, steps=4000,
        batch=64, lr=2e-3, id_temperature=0.1, id_weight=0.5, seed=0))
    # CAPP: pooled + per-frame embedding (frame_dim per frame), pose with its velocity, and
    # the window's own pose shifted by hard_shifts frames as extra negatives (n_hard per row).
    c.capp = ml_collections.ConfigDict(dict(
        width=64, heads=4, pose_layers=6, audio_layers=2, embed_dim=64, frame_dim=8,
        velocity=True, hard_shifts=(-8, -6, -4, -3, -2, 2, 3, 4, 6, 8), n_hard=4, clips=384,
        frames=150, steps=600, batch=32, lr=1e-3, test_clips=64, max_minutes=0.0, seed=0))
    if name == "test":
        c.runner.update(dict(clips=2, frames=76, samples=1, cfg_ablation=(0.0, 1.0),
                             steps_ablation=(2, 3), fvd=False))
        c.syncnet.update(dict(clips=4, frames=30, steps=4, batch=4, test_clips=1, width=0.125,
                              embed_dim=16))
        c.oracle.update(dict(channels=(8, 16, 16, 32), blocks=1, hidden=32, id_dim=16,
                             identities=4, frames_per_identity=4, tracks=2, track_frames=50,
                             test_identities=2, test_frames=8, steps=4, batch=8))
        c.capp.update(dict(width=16, heads=2, pose_layers=6, audio_layers=1, embed_dim=16,
                           frame_dim=2, hard_shifts=(-2, 2), n_hard=1, clips=8, frames=80,
                           steps=4, batch=4, test_clips=2))
    return c
