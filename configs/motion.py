"""Stage 2: motion diffusion transformer (VASA-1's MotionDiT over X = [z_pose, z_dyn]).

    python -m vasa_jax.train.extract_latents --face-checkpoint W1 --out LATENTS
    python -m vasa_jax.train.motion --config configs/motion.py:tiny --workdir W \
        --config.latents_dir=LATENTS

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


TRAIN = {
    "tiny": dict(batch_size=32, lr=1e-3, warmup_steps=100, steps=3000, log_every=50,
                 ckpt_every=500),
    "full": dict(batch_size=256, lr=1e-4, warmup_steps=2000, steps=500_000, log_every=100,
                 ckpt_every=5000),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name not in MODELS:
        raise ValueError(f"unknown motion variant {name!r}: choose one of {', '.join(MODELS)}")
    config = ml_collections.ConfigDict()
    config.variant = name
    config.seed = 0
    config.model = ml_collections.ConfigDict(MODELS[name])
    # Trainer (vasa_jax/train/motion.py).
    config.latents_dir = ""  # from extract_latents; required
    config.update(TRAIN[name])
    config.weight_decay = 0.0
    config.grad_clip = 1.0
    config.ema_decay = 0.999
    config.keep_checkpoints = 3
    config.max_train_minutes = 0.0  # 0: no time limit
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))  # 0: all
    config.diffusion = ml_collections.ConfigDict(dict(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    # CFG training: each condition dropped with its probability (VASA-1: 0.1, history 0.5);
    # the end of the window's audio is cut at a random frame with audio_cut_prob.
    config.drop = ml_collections.ConfigDict(
        dict(audio=0.1, gaze=0.1, distance=0.1, emotion=0.1, history=0.5))
    config.audio_cut_prob = 0.1
    config.velocity_weight = 0.5  # MSE of first differences (0 turns it off)
    # Sampling defaults (VASA-1: 50 steps, λ_audio 0.5, λ_gaze 1).
    config.sample = ml_collections.ConfigDict(dict(steps=10, cfg=ml_collections.ConfigDict(
        dict(audio=0.5, gaze=1.0))))
    return config
