"""SynthTalk identity embedding (IdentityNet + ArcFace head) for stage 1's cross-identity loss.

    python -m vasa_jax.train.identity --config configs/identity.py:tiny --workdir W

The trained network lands in `W/identity_net/`; pass it to stage 1 with
`--config.identity_net=W/identity_net --config.loss.cross_id=...`. Train it on the same SynthTalk
data as stage 1 (the `data.synthtalk` fields below default to stage 1's `tiny_run` set).
On real data use an ArcFace network loaded from the user's own weights instead
(`vasa_jax.models.arcface`).
"""

import ml_collections

# Same sizes as configs/synthtalk.py:cpu and configs/face_latent.py:tiny_run.
DATA = dict(resolution=64, num_frames=50, num_train_identities=48, num_test_identities=8,
            clips_per_identity=2, seed=0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name != "tiny":
        raise ValueError(f"unknown identity variant {name!r}: choose tiny")
    config = ml_collections.ConfigDict()
    config.variant = name
    config.seed = 0
    config.net = ml_collections.ConfigDict(dict(dim=64, channels=(16, 32, 64, 128)))
    config.margin = 0.3
    config.scale = 16.0
    config.batch_size = 32  # frame pairs per step: source frames + other-identity frames
    config.lr = 2e-3
    config.steps = 600
    config.log_every = 50
    config.data = ml_collections.ConfigDict(dict(
        data_dir="", synthtalk=ml_collections.ConfigDict(DATA)))
    return config
