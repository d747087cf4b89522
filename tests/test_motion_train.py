"""Stage 2 end to end on tiny configs: latent extraction (real orbax stage-1 checkpoint, real
array_record shards), the motion trainer (resume, sharded == single device) and the sampler."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vasa_jax import diffusion
from vasa_jax.config_util import load_config, set_fields
from vasa_jax.data import latents
from vasa_jax.errors import ConfigError
from vasa_jax.models import motion_dit
from vasa_jax.train import extract_latents, loop
from vasa_jax.train import motion as motion_train
from vasa_jax.train.common import read_metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SYNTH = dict(resolution=64, num_frames=20, num_train_identities=4, num_test_identities=2,
             clips_per_identity=2, seed=0)  # = conftest's stage-1 fixture data


def test_extracted_latents(latent_dir):
    info = latents.read_info(latent_dir)
    assert info["complete"] and info["motion_dim"] == 7 + 16
    assert info["audio"] == dict(kind="logmel", wav2vec2_path=None, feature_dim=80)
    train = latents.LatentSource(latent_dir, "train")
    test = latents.LatentSource(latent_dir, "test")
    assert len(train) == 8 and len(test) == 4
    assert len(info["splits"]["train"]["shards"]) == 3  # ceil(8 / 3)
    rec = train[5]
    assert rec["motion"].shape == (20, 23) and rec["audio_feat"].shape == (20, 80)
    assert rec["gaze"].shape == (20, 2) and rec["distance"].shape == (20,)
    assert np.all(np.isfinite(rec["motion"])) and np.std(rec["motion"][:, :7]) > 0
    stats = latents.read_stats(latent_dir)
    allm = np.concatenate([train[i]["motion"] for i in range(len(train))])
    np.testing.assert_allclose(stats["motion_mean"], allm.mean(0), rtol=1e-4, atol=1e-5)


def test_extraction_resumes_and_refuses_other_settings(face_workdir, tmp_path):
    out = str(tmp_path / "lat")
    extract_latents.extract(face_workdir, out, shard_size=3, progress=False)
    names = latents.read_info(out)["splits"]["train"]["shards"]
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
    blob = latents.LatentSource(out, "train")[4]
    os.remove(os.path.join(out, names[1]))  # as if killed while writing shard 1
    extract_latents.extract(face_workdir, out, shard_size=3, progress=False)
    after = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
    assert after[names[0]] == before[names[0]] and after[names[2]] == before[names[2]]
    again = latents.LatentSource(out, "train")[4]
    np.testing.assert_array_equal(again["motion"], blob["motion"])
    with pytest.raises(ConfigError, match="fresh --out"):
        extract_latents.extract(face_workdir, out, shard_size=3, audio="logmel",
                                synthtalk=dict(SYNTH, num_frames=10), progress=False)


def _motion_config(latent_dir, **overrides):
    cfg = load_config(f"{CONFIGS / 'motion.py'}:tiny")
    cfg.latents_dir = latent_dir
    cfg.batch_size = 8
    cfg.log_every = 1
    cfg.ckpt_every = 2
    cfg.warmup_steps = 2
    return set_fields(cfg, overrides)


def _final(workdir):
    return jax.device_get(
        loop.restore_on_one_device(workdir, motion_train.build_state_fns, "stage-2")[2])


def test_motion_resume_and_sharded_equality(latent_dir, tmp_path, devices):
    straight = str(tmp_path / "straight")
    motion_train.train(_motion_config(latent_dir, steps=4, **{"mesh.num_devices": 1,
                                                              "mesh.data": 1}), straight)
    resumed = str(tmp_path / "resumed")
    motion_train.train(_motion_config(latent_dir, steps=2, **{"mesh.data": 4, "mesh.fsdp": 2}),
                       resumed)
    motion_train.train(_motion_config(latent_dir, steps=4, **{"mesh.data": 4, "mesh.fsdp": 2}),
                       resumed)
    a = {r["step"]: r for r in read_metrics(straight)}
    b = {r["step"]: r for r in read_metrics(resumed)}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):  # sharded (8 devices) vs 1 device; steps 3-4 after a restart
        for k in ("loss", "x0_mse", "velocity_mse"):
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-5, abs=1e-7), (step, k)
    assert a[4]["loss"] != a[3]["loss"]
    pa = _final(straight)
    pb = _final(resumed)
    for tree in ("params", "ema"):
        x = np.concatenate([np.ravel(v) for v in jax.tree.leaves(pa[tree])])
        y = np.concatenate([np.ravel(v) for v in jax.tree.leaves(pb[tree])])
        assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(x)), tree


def test_motion_trainer_checks_dims(latent_dir, tmp_path):
    with pytest.raises(ConfigError, match="motion_dim"):
        motion_train.train(_motion_config(latent_dir, steps=1, **{"model.motion_dim": 30}),
                           str(tmp_path / "w"))


def _tiny_model():
    cfg = load_config(f"{CONFIGS / 'motion.py'}:tiny").model
    model = motion_dit.build_model(cfg, nnx.Rngs(3))
    # Non-zero output head so the sampler's result depends on the conditions.
    model.head.kernel.value = 0.05 * jax.random.normal(jax.random.key(1),
                                                       model.head.kernel.value.shape)
    return model, cfg


def _conds(cfg, b=2, seed=0):
    r = np.random.default_rng(seed)
    return dict(audio=jnp.asarray(r.normal(size=(b, cfg.window, cfg.audio_dim)), jnp.float32),
                x_pre=jnp.asarray(r.normal(size=(b, cfg.history, cfg.motion_dim)), jnp.float32),
                a_pre=jnp.asarray(r.normal(size=(b, cfg.history, cfg.audio_dim)), jnp.float32),
                gaze=jnp.asarray(r.normal(size=(b, 2)), jnp.float32),
                distance=jnp.asarray(r.normal(size=(b, 1)), jnp.float32),
                emotion=jax.nn.one_hot(jnp.asarray([1, 3][:b]), cfg.emotion_dim))


def test_sampler_with_zero_guidance_equals_conditional_sampling():
    from vasa_jax.inference.motion import WindowSampler

    model, cfg = _tiny_model()
    schedule = diffusion.make_schedule(1000)
    conds = _conds(cfg)
    rng = jax.random.key(7)
    sampler = WindowSampler(model, schedule, num_steps=5,
                            scales={"audio": 0.0, "gaze": 0.0, "emotion": 0.0})
    guided = sampler(rng, conds)  # scales traced: 4 variants in one batch, weights 0
    k_init, _ = jax.random.split(rng)
    x_T = jax.random.normal(k_init, (2, cfg.window, cfg.motion_dim))
    plain = diffusion.ddim_sample(
        lambda x, t: model(x, jnp.full((2,), t), conds["audio"], conds["x_pre"], conds["a_pre"],
                           conds["gaze"], conds["distance"], conds["emotion"]),
        schedule, x_T, 5)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), rtol=1e-5, atol=1e-5)
    # Non-zero guidance changes the sample, without recompiling.
    other = sampler(rng, conds, {"audio": 1.0, "gaze": 0.5, "emotion": 0.0})
    assert np.max(np.abs(np.asarray(other) - np.asarray(plain))) > 1e-4
    assert sampler.num_traces == 1


def test_sample_sequence_any_length_one_compile():
    from vasa_jax.inference.motion import WindowSampler, sample_sequence

    model, cfg = _tiny_model()
    sampler = WindowSampler(model, diffusion.make_schedule(1000), num_steps=3,
                            scales={"audio": 0.5})
    c = _conds(cfg)
    for t in (5, 8, 21):
        audio = jax.random.normal(jax.random.key(t), (2, t, cfg.audio_dim))
        seq = sample_sequence(sampler, audio, c["gaze"], c["distance"], c["emotion"],
                              jax.random.key(0))
        assert seq.shape == (2, t, cfg.motion_dim) and np.all(np.isfinite(np.asarray(seq)))
    assert sampler.num_traces == 1
    # Same seed, same audio → same motion; another seed → other motion.
    audio = jax.random.normal(jax.random.key(0), (1, 12, cfg.audio_dim))
    args = (c["gaze"][:1], c["distance"][:1], c["emotion"][:1])
    s0 = sample_sequence(sampler, audio, *args, jax.random.key(0))
    s0b = sample_sequence(sampler, audio, *args, jax.random.key(0))
    s1 = sample_sequence(sampler, audio, *args, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(s0), np.asarray(s0b))
    assert np.max(np.abs(np.asarray(s0) - np.asarray(s1))) > 1e-3
