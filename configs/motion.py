"""Stage 2: motion diffusion transformer (VASA-1's MotionDiT over X = [z_pose, z_dyn]).

    python -m vasa_jax.train.motion --config configs/motion.py:tiny --workdir W

Arguments: `tiny` (width 64, 2 layers, 4 heads: CPU tests and demos; motion_dim 7 + 16 matches
configs/face_latent.py:tiny, audio_dim 80 = the default log-mel bands of vasa_jax.models.audio)
or `full` (VASA-1's 8 layers, width 512, 8 heads; motion_dim 7 + 256 matches
face_latent.py:vox512's dyn_dim, audio_dim 768 = Wav2Vec2-base features; W = 25, K = 10).
Parameter count: `vasa_jax.models.motion_dit.count_params(get_config("full").model)`.
"""

import ml_collections

# emotion_dim 5 = SynthTalk's EMOTIONS (neutral, happy, sad, angry, surprised).
MODELS = {
    "tiny": dict(motion_dim=7 + 16, audio_dim=80, emotion_dim=5, window=8, history=4,
                 width=64, depth=2, heads=4, mlp_ratio=4.0, time_freq_dim=64),
    "full": dict(motion_dim=7 + 256, audio_dim=768, emotion_dim=5, window=25, history=10,
                 width=512, depth=8, heads=8, mlp_ratio=4.0, time_freq_dim=256),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name not in MODELS:
        raise ValueError(f"unknown motion variant {name!r}: choose one of {', '.join(MODELS)}")
    config = ml_collections.ConfigDict()
    config.variant = name
    config.seed = 0
    config.model = ml_collections.ConfigDict(MODELS[name])
    # trainer fields: added by the trainer
    return config
