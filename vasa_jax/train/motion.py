"""Stage 2 trainer: the motion diffusion transformer on extracted latent sequences.

    python -m vasa_jax.train.motion --config configs/motion.py:tiny --workdir W \
        --config.latents_dir=LATENTS

Windows of W frames with their K history frames come from `pipelines.stage2_dataset` over the
latent data set (`vasa_jax.data.latents`); motion, audio features, gaze and distance are
normalised with the set's train statistics (kept in the checkpoint's config via
`latents_dir`). Each step: DDPM noise at a random step, per-condition dropout and a random audio
cut for classifier-free guidance, X₀ prediction with an MSE (+ optional velocity) loss over the
real frames of the window. The mesh, checkpoints (with the grain iterator), metrics.jsonl,
non-finite guard and resume are the shared `vasa_jax.train.loop`, as in stage 1.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vasa_jax import diffusion, sharding
from vasa_jax.checkpoint import Checkpointer
from vasa_jax.errors import check
from vasa_jax.data.latents import Normalizer
from vasa_jax.models import motion_dit
from vasa_jax.train import loop

log = logging.getLogger(__name__)

BATCH_KEYS = ("motion", "audio_feat", "frame_mask", "history_mask", "cond_gaze",
              "cond_distance", "emotion")


# Normalisation: `vasa_jax.data.latents.Normalizer` (the latent set's train statistics).


def model_inputs(norm: Normalizer, batch: dict, history: int, emotion_dim: int) -> dict:
    """A stage-2 batch (raw fields, [B, K+W, ...]) → normalised model inputs and targets."""
    motion = norm("motion", batch["motion"])
    afeat = norm("audio_feat", batch["audio_feat"])
    k = history
    return dict(
        x0=motion[:, k:], x_pre=motion[:, :k], audio=afeat[:, k:], a_pre=afeat[:, :k],
        valid=batch["frame_mask"][:, k:], history_valid=batch["history_mask"],
        gaze=norm("gaze", batch["cond_gaze"]),
        distance=norm("distance", batch["cond_distance"])[:, None],
        emotion=jax.nn.one_hot(batch["emotion"], emotion_dim),
    )


# ----------------------------------------------------------------------------------------------
# State and step.


def build_state_fns(config, mesh):
    """(graphdef, init_fn, abstract_state, state_shardings)."""
    tx, _ = loop.make_optimizer(config)

    def init(rng):
        model = motion_dit.build_model(config.model, nnx.Rngs(rng))
        params = nnx.state(model, nnx.Param).to_pure_dict()
        return dict(step=jnp.zeros((), jnp.int32), params=params,
                    ema=jax.tree.map(jnp.copy, params), opt=tx.init(params))

    abstract_model = nnx.eval_shape(lambda: motion_dit.build_model(config.model, nnx.Rngs(0)))
    graphdef = nnx.split(abstract_model, nnx.Param)[0]
    abstract = jax.eval_shape(init, jax.random.key(0))
    return graphdef, init, abstract, sharding.tree_shardings(abstract, mesh)


def make_train_step(config, graphdef, norm: Normalizer):
    tx, sched = loop.make_optimizer(config)
    schedule = diffusion.make_schedule(**config.diffusion.to_dict())
    mcfg = config.model
    drop_probs = config.drop.to_dict()

    def loss_fn(params, batch, rng):
        model = nnx.merge(graphdef, params)
        inp = model_inputs(norm, batch, mcfg.history, mcfg.emotion_dim)
        b = inp["x0"].shape[0]
        k_t, k_noise, k_drop, k_cut = jax.random.split(rng, 4)
        t = diffusion.sample_timesteps(k_t, b, schedule)
        noise = jax.random.normal(k_noise, inp["x0"].shape)
        x_t = diffusion.q_sample(schedule, inp["x0"], t, noise)
        drop = motion_dit.sample_drop_masks(k_drop, b, drop_probs)
        audio_valid = motion_dit.sample_audio_cut(k_cut, b, mcfg.window, config.audio_cut_prob)
        pred = model(x_t, t, inp["audio"], inp["x_pre"], inp["a_pre"], inp["gaze"],
                     inp["distance"], inp["emotion"], drop=drop, audio_valid=audio_valid,
                     history_valid=inp["history_valid"])
        loss, terms = diffusion.x0_loss(pred, inp["x0"], inp["valid"], config.velocity_weight,
                                        return_terms=True)
        return loss, terms

    def train_step(state, batch):
        # Randomness from (seed, step) only: identical on any mesh and after a resume.
        rng = jax.random.fold_in(jax.random.key(config.seed), state["step"])
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, rng)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = loop.ema_update(state["ema"], params, state["step"], config.ema_decay)
        metrics = {"loss": loss, **terms, "grad_norm": optax.global_norm(grads),
                   "lr": sched(state["step"])}
        return dict(state, step=state["step"] + 1, params=params, ema=ema, opt=opt), metrics

    return train_step


# ----------------------------------------------------------------------------------------------
# Reading a trained model back.


def restore_motion_model(workdir: str, step: int | None = None, *, ema: bool = True):
    """(MotionDiT, config, Normalizer, step) from a stage-2 workdir (EMA weights by default)."""
    from vasa_jax.data import latents

    config, graphdef, state = loop.restore_on_one_device(workdir, build_state_fns, "stage-2",
                                                         step)
    model = nnx.merge(graphdef, state["ema" if ema else "params"])
    norm = Normalizer(latents.read_stats(workdir))  # copied there by `train`
    return model, config, norm, int(state["step"])


# ----------------------------------------------------------------------------------------------
# The loop.


def train(config, workdir: str) -> dict:
    """Trains (or resumes) stage 2 in `workdir`; returns the last logged metrics."""
    from vasa_jax.data import latents, pipelines

    jax.config.update("jax_threefry_partitionable", True)
    check(bool(config.latents_dir), "config.latents_dir is empty: run "
          "`python -m vasa_jax.train.extract_latents` and pass --config.latents_dir=DIR")
    info = latents.read_info(config.latents_dir)
    check(info.get("complete", False), f"latent data set {config.latents_dir!r} is incomplete: "
          "rerun extract_latents (it resumes)")
    mcfg = config.model
    check(info["motion_dim"] == mcfg.motion_dim,
          f"model.motion_dim={mcfg.motion_dim} but the latents have {info['motion_dim']}: set "
          f"--config.model.motion_dim={info['motion_dim']}")
    check(info["audio"]["feature_dim"] == mcfg.audio_dim,
          f"model.audio_dim={mcfg.audio_dim} but the latents' audio features have "
          f"{info['audio']['feature_dim']}: set "
          f"--config.model.audio_dim={info['audio']['feature_dim']}")
    loop.save_config(config, workdir)
    if jax.process_index() == 0:  # the normalisation travels with the model
        from etils import epath

        epath.Path(config.latents_dir, latents.STATS_JSON).copy(
            epath.Path(workdir, latents.STATS_JSON), overwrite=True)

    # Mesh.
    mesh, batch_sharding, local_batch = loop.setup_mesh(config)

    # Data.
    source = latents.LatentSource(config.latents_dir, "train")
    data_iter = iter(pipelines.stage2_dataset(
        source, window=mcfg.window, history=mcfg.history, batch_size=local_batch,
        seed=config.seed, fields=("motion", "audio_feat"), audio_field=None,
        condition_fields=("gaze", "distance"), clip_fields=("emotion",)))
    norm = Normalizer(latents.read_stats(config.latents_dir))

    # Model and optimiser: created already sharded (or restored onto this mesh).
    graphdef, init, abstract, shardings = build_state_fns(config, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        save_interval_steps=config.ckpt_every, max_to_keep=config.keep_checkpoints)
    state = loop.restore_or_init(ckpt, init, abstract, shardings, jax.random.key(config.seed),
                                 data_iter)
    train_step = jax.jit(make_train_step(config, graphdef, norm),
                         in_shardings=(shardings, batch_sharding),
                         out_shardings=(shardings, None), donate_argnums=0)

    def to_device(batch):
        return pipelines.global_batch({k: batch[k] for k in BATCH_KEYS}, mesh)

    return loop.run(config, workdir, state=state, train_step=train_step, data_iter=data_iter,
                    to_device=to_device, ckpt=ckpt)


def main(argv):
    del argv
    from absl import flags

    from vasa_jax import distributed

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    distributed.initialize_from_flags()  # multi-process runs: before any device is touched
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/motion.py:ARG", lock_config=True)
    flags.DEFINE_string("workdir", None, "where checkpoints and metrics.jsonl go")
    flags.mark_flags_as_required(["config", "workdir"])
    from vasa_jax import distributed

    distributed.define_flags()
    app.run(main)
