"""SynthTalk data set sizes.

    vasa-jax synthtalk-build --config configs/synthtalk.py:tiny --data-dir ~/vasa_data

Arguments: `tiny` (tests and CPU demos), `cpu` (session 2's 30-minute CPU stage-1 run), `motion_cpu`
(the CPU stage-2 run and its sanity eval, docs/motion.md), `small` (CPU training runs), `default` (a GPU-sized
stage-1/2 corpus: 2,000 train identities × 4 clips × 4 s at 256²), or `full` (512² frames).
"""

import ml_collections

SIZES = {
    "tiny": dict(resolution=64, num_frames=50, num_train_identities=8, num_test_identities=2,
                 clips_per_identity=2),
    # The 30-minute CPU stage-1 run (configs/face_latent.py:tiny_run, configs/identity.py).
    "cpu": dict(resolution=64, num_frames=50, num_train_identities=48, num_test_identities=8,
                clips_per_identity=2),
    # Stage 2 on CPU: 4-s clips of the first 96 of stage 1's 384 train identities (train
    # identity k is the same for any count, vasa_jax/data/builders.py) and its 8 held-out ones.
    "motion_cpu": dict(resolution=64, num_frames=100, num_train_identities=96,
                       num_test_identities=8, clips_per_identity=2),
    "small": dict(resolution=128, num_frames=100, num_train_identities=64,
                  num_test_identities=8, clips_per_identity=4),
    "default": dict(resolution=256, num_frames=100, num_train_identities=2000,
                    num_test_identities=100, clips_per_identity=4),
    "full": dict(resolution=512, num_frames=100, num_train_identities=2000,
                 num_test_identities=100, clips_per_identity=4),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "default"
    if name not in SIZES:
        raise ValueError(f"unknown SynthTalk size {name!r}: choose one of {', '.join(SIZES)}")
    config = ml_collections.ConfigDict(dict(SIZES[name], seed=0))
    return config
