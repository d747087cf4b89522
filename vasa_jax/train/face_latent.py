"""Stage 1 trainer: the face latent space (encoders + 3D warping decoder) with its losses.

    python -m vasa_jax.train.face_latent --config configs/face_latent.py:tiny --workdir W \
        --config.batch_size=8

Sections: mesh → data → model/optimiser (created already sharded) → update steps → checkpoint
→ loop. Parameters live as pure dicts (`nnx.split` once; `nnx.merge` inside the jitted steps).
On restart the latest checkpoint (model, optimisers, EMA and the grain iterator) is restored onto
the current mesh, so training resumes at the same batch on any mesh shape.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from vasa_jax import losses, sharding
from vasa_jax.checkpoint import Checkpointer
from vasa_jax.data.synthtalk.spec import EMOTIONS
from vasa_jax.errors import check
from vasa_jax.models.discriminator import MultiScaleDiscriminator
from vasa_jax.models.face import build_model, input_size, output_view
from vasa_jax.train import augment, loop

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Model and state.


def _modules(config, rng):
    rngs = nnx.Rngs(rng)
    gen = build_model(config, rngs)
    disc = MultiScaleDiscriminator(**config.disc.to_dict(), rngs=rngs)
    return gen, disc


def _optimizer(config):
    return loop.make_optimizer(config, b1=config.get("adam_b1", 0.5))


def build_state_fns(config, mesh):
    """Returns (graphdefs, init_fn, abstract_state, state_shardings)."""
    tx, _ = _optimizer(config)

    def init(rng):
        gen, disc = _modules(config, rng)
        _, g_params, g_rest = nnx.split(gen, nnx.Param, ...)
        _, d_params = nnx.split(disc, nnx.Param)
        g = g_params.to_pure_dict()
        d = d_params.to_pure_dict()
        return dict(step=jnp.zeros((), jnp.int32), gen=g, disc=d,
                    gen_rest=g_rest.to_pure_dict(), ema=jax.tree.map(jnp.copy, g),
                    opt_gen=tx.init(g), opt_disc=tx.init(d))

    abs_gen, abs_disc = nnx.eval_shape(lambda: _modules(config, jax.random.key(0)))
    g_def = nnx.split(abs_gen, nnx.Param, ...)[0]
    d_def = nnx.split(abs_disc, nnx.Param)[0]
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.tree_shardings(abstract, mesh)
    return (g_def, d_def), init, abstract, shardings


# ----------------------------------------------------------------------------------------------
# Losses and update steps.


def _to_float(images):
    return images.astype(jnp.float32) / 127.5 - 1.0


def expression_target(batch, role: str, dims: int = 2) -> jax.Array:
    """[B, dims]: the values loss.expression anchors z_dyn[:, :dims] to (each 0…1): mouth
    opening and eye closure, then (dims 4) mouth width and rounding."""
    mouth = batch[f"{role}_mouth"]
    cols = [mouth[:, 0], batch[f"{role}_blink"], mouth[:, 1], mouth[:, 2]][:dims]
    return jnp.stack(cols, axis=-1).astype(jnp.float32)


def expression_dims(config) -> int:
    """`config.expression_dims`: how many z_dyn components loss.expression anchors (2 or 4)."""
    dims = config.get("expression_dims", 2)
    check(dims in (2, 4), f"expression_dims={dims!r} is invalid: use 2 (mouth opening, eye "
          "closure) or 4 (+ mouth width and rounding)")
    return int(dims)


def keypoint_landmarks(config) -> int:
    """`config.keypoint_landmarks`: how many of synthtalk.LANDMARKS, from the first,
    loss.keypoints guides (4: eyes, nose tip, mouth centre; up to 8 with the mouth's corners
    and inner lip edges)."""
    from vasa_jax.data import synthtalk

    n, most = config.get("keypoint_landmarks", 4), len(synthtalk.LANDMARKS)
    check(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n <= most,
          f"keypoint_landmarks={n!r} is invalid: use 1 to {most} (how many of "
          f"{', '.join(synthtalk.LANDMARKS)} loss.keypoints guides)")
    return int(n)


def augment_mirror_prob(config) -> float:
    """`config.augment_mirror_prob`: the share of training examples mirrored left to right
    (train/augment.py's `mirror`; 0: off)."""
    prob = float(config.get("augment_mirror_prob", 0.0))
    check(0.0 <= prob <= 1.0, f"augment_mirror_prob={prob!r} is invalid: use a probability in "
          "[0, 1] (0: off)")
    return prob


def supervises_other(config) -> bool:
    """`config.supervise_other`: the motion losses (head_pose, head_position, expression) also
    read the frame of another identity that every batch carries."""
    v = config.get("supervise_other", False)
    check(isinstance(v, (bool, np.bool_)), f"supervise_other={v!r} is invalid: use True or False")
    return bool(v)


def head_pose_scale(config) -> tuple[float, float, float]:
    """`config.head_pose_scale_deg`: the degrees of yaw, pitch and roll error that cost
    loss.head_pose one unit (one number for all three, or three)."""
    raw = config.get("head_pose_scale_deg", 30.0)
    vals = tuple(float(v) for v in (raw if isinstance(raw, (tuple, list)) else (raw,) * 3))
    check(len(vals) == 3 and all(v > 0 for v in vals),
          f"head_pose_scale_deg={raw!r} is invalid: use one positive number of degrees or three "
          "(yaw, pitch, roll), e.g. 30 or (40, 32, 16)")
    return vals


# Losses that read per-frame measurements (SynthTalk's truth; on real video a landmark detector,
# pose estimator or face tracker): (loss weights, record fields, frames whose readings the batch
# carries, the one-line error when the data lacks them). train() checks and loads from this.
_SUPERVISION = (
    (("mouth", "eyes"), ("landmarks",), ("driver",),
     "loss.mouth/loss.eyes need per-frame face landmarks, which this data set lacks (SynthTalk "
     "has them; real video needs a landmark detector): set --config.loss.mouth=0 "
     "--config.loss.eyes=0"),
    (("head_pose",), ("rotation",), ("source", "driver"),
     "loss.head_pose needs per-frame head rotations, which this data set lacks (SynthTalk has "
     "them; real video needs a pose estimator): set --config.loss.head_pose=0"),
    (("expression",), ("mouth", "blink"), ("source", "driver"),
     "loss.expression needs per-frame mouth opening and eye closure, which this data set "
     "lacks (SynthTalk has them; real video needs a landmark detector): set "
     "--config.loss.expression=0"),
    (("keypoints",), ("landmarks",), ("source", "driver"),
     "loss.keypoints needs per-frame face landmarks, which this data set lacks (SynthTalk has "
     "them; real video needs a landmark detector): set --config.loss.keypoints=0"),
    (("head_position",), ("translation", "scale"), ("source", "driver"),
     "loss.head_position needs per-frame head centres and scales, which this data set lacks "
     "(SynthTalk has them; real video needs a face tracker): set "
     "--config.loss.head_position=0"),
    (("mouth_geometry",), ("mouth_geometry",), ("source", "driver"),
     "loss.mouth_geometry needs the mouth's drawn half-width and half-opening, which this data "
     "set cannot give (SynthTalk computes them from its identities and mouth factors; real "
     "video needs a 3D face tracker): set --config.loss.mouth_geometry=0"),
    (("emotion",), ("emotion_onehot",), ("source", "driver"),
     "loss.emotion needs each clip's emotion label, which this data set lacks (SynthTalk has "
     "it; real video needs an emotion recogniser's class probabilities): set "
     "--config.loss.emotion=0"),
    (("gaze",), ("eye_gaze",), ("source", "driver"),
     "loss.gaze needs per-frame eye-in-head gaze angles, which this data set lacks (SynthTalk "
     "has them; real video needs a gaze estimator): set --config.loss.gaze=0"),
)
# loss.mouth_geometry's targets: (log half-width, half-opening) in head units mapped to about
# 0…1 (half-width 0.074…0.30 of the face's half-width, half-opening 0…0.144), the scale of the
# expression values it sits beside in z_dyn.
MOUTH_GEOMETRY_RANGE = ((-2.6, 1.4), (0.0, 0.144))
# loss.gaze's targets: eye-in-head (yaw, pitch) in degrees mapped to 0…1 over (low, span); the
# span covers SynthTalk's eye-rotation limits (±35°, ±25°) and a human eye's range.
EYE_GAZE_RANGE = ((-35.0, 70.0), (-25.0, 50.0))
NUM_EMOTIONS = len(EMOTIONS)  # loss.emotion anchors one z_dyn component to each


def check_motion_losses(config, record: dict) -> None:
    """Refuses (ConfigError, one line) motion-loss settings that are invalid or that need truth
    fields `record` (one training record) lacks."""
    from vasa_jax.data.pipelines import DERIVED_FACTORS

    def present(field):  # a derived field is there when what it is computed from is
        needs = DERIVED_FACTORS[field][0] if field in DERIVED_FACTORS else (field,)
        return all(g in record for g in needs)

    for losses_on, fields, _, message in _SUPERVISION:
        check(not any(config.loss.get(n, 0.0) > 0 for n in losses_on)
              or all(present(f) for f in fields), message)
    if config.loss.get("expression", 0.0) > 0:
        expression_dims(config)
    dyn = int(config.model.dyn_dim)
    for name, (start, stop) in anchor_layout(config).items():
        check(stop <= dyn, f"loss.{name} anchors z_dyn[:, {start}:{stop}] but "
              f"model.dyn_dim={dyn}: set --config.model.dyn_dim={stop} or more")
    if config.loss.get("head_pose", 0.0) > 0:
        head_pose_scale(config)
    if config.loss.get("keypoints", 0.0) > 0:
        need, have = keypoint_landmarks(config), int(config.model.get("motion_keypoints", 0))
        check(have >= need, f"loss.keypoints guides the first {need} motion keypoints to the "
              f"landmarks but model.motion_keypoints={have}: set --config.model.motion_keypoints"
              f"={need} or more, or --config.loss.keypoints=0")
    supervises_other(config)


# The loss.* terms motion_terms computes (what supervises the motion encoder alone).
MOTION_LOSSES = ("head_pose", "head_position", "expression", "keypoints", "mouth_geometry",
                 "emotion", "gaze")


def anchor_layout(config) -> dict[str, tuple[int, int]]:
    """The z_dyn components each anchoring loss that is on reads, as (start, stop), packed from
    0 in this order: loss.expression (2 or 4 values), loss.mouth_geometry (2), loss.emotion (one
    per emotion, NUM_EMOTIONS), loss.gaze (2). The components after the last stay free."""
    widths = (("expression", lambda: expression_dims(config)), ("mouth_geometry", lambda: 2),
              ("emotion", lambda: NUM_EMOTIONS), ("gaze", lambda: 2))
    layout, start = {}, 0
    for name, width in widths:
        if config.loss.get(name, 0.0) > 0:
            layout[name] = (start, start + width())
            start += width()
    return layout


def to_unit_range(values: jax.Array, ranges) -> jax.Array:
    """[B, K] measurements → an anchoring loss's targets (about 0…1), per column (value − low)
    / span over `ranges` ((low, span) × K: MOUTH_GEOMETRY_RANGE, EYE_GAZE_RANGE)."""
    lo = jnp.asarray([r[0] for r in ranges], jnp.float32)
    span = jnp.asarray([r[1] for r in ranges], jnp.float32)
    return (values.astype(jnp.float32) - lo) / span


def stage1_factors(config, record: dict) -> list[str]:
    """The per-frame factors a stage-1 batch carries: those the records store, plus the derived
    ones (pipelines.DERIVED_FACTORS) the motion losses of `config.loss` read."""
    from vasa_jax.data import pipelines

    stored = [f for f in pipelines.STAGE1_FACTORS if f in record]
    derived = [f for f in pipelines.DERIVED_FACTORS
               if any(f in fields and any(config.loss.get(n, 0.0) > 0 for n in losses_on)
                      for losses_on, fields, _, _ in _SUPERVISION)]
    return stored + derived


def motion_terms(config, coded: dict, batch: dict) -> dict:
    """The supervised motion losses that `config.loss` turns on (MOTION_LOSSES), unweighted,
    over the frames in `coded`: role ("source", "driver", "other") → that frame's codes (at least z_pose and z_dyn); `batch` holds each role's truth as
    `<role>_<field>`. Shared by the train step and benchmarks/motion_encoder_curve.py."""
    w = config.loss
    terms = {}

    def codes(key):
        return jnp.concatenate([e[key] for e in coded.values()])

    def truth(field):
        return jnp.concatenate([batch[f"{r}_{field}"] for r in coded])

    if w.get("head_pose", 0.0) > 0:
        terms["head_pose"] = losses.head_pose_loss(
            codes("z_pose"), truth("rotation"), head_pose_scale(config))
    if w.get("head_position", 0.0) > 0:
        terms["head_position"] = losses.head_position_loss(
            codes("z_pose"), truth("translation"), truth("scale"))
    if w.get("expression", 0.0) > 0:
        dims = expression_dims(config)
        terms["expression"] = losses.expression_loss(
            codes("z_dyn"),
            jnp.concatenate([expression_target(batch, r, dims) for r in coded]),
            squared=config.get("expression_squared", False))
    if w.get("keypoints", 0.0) > 0:
        n, landmarks = keypoint_landmarks(config), truth("landmarks")
        check(landmarks.shape[1] >= n, f"keypoint_landmarks={n} but the data has "
              f"{landmarks.shape[1]} landmarks per frame: rebuild SynthTalk (builder 1.2.0 or "
              f"later) or set --config.keypoint_landmarks={landmarks.shape[1]}")
        terms["keypoints"] = losses.keypoint_loss(codes("keypoints"), landmarks[:, :n])
    layout = anchor_layout(config)
    targets = {
        "mouth_geometry": lambda: to_unit_range(truth("mouth_geometry"), MOUTH_GEOMETRY_RANGE),
        "emotion": lambda: truth("emotion_onehot").astype(jnp.float32),
        "gaze": lambda: to_unit_range(truth("eye_gaze"), EYE_GAZE_RANGE)}
    for name, target in targets.items():
        if name in layout:
            start = layout[name][0]
            terms[name] = losses.expression_loss(
                codes("z_dyn")[:, start:], target(),
                squared=config.get("expression_squared", False))
    return terms


def motion_batch_keys(config) -> list[str]:
    """The truth fields (`<role>_<field>`) the motion losses of `config.loss` read."""
    keys = []
    for losses_on, fields, roles, _ in _SUPERVISION:
        if any(config.loss.get(n, 0.0) > 0 for n in losses_on):
            if supervises_other(config) and "source" in roles:  # the motion losses
                roles = (*roles, "other")
            keys += [f"{r}_{f}" for r in roles for f in fields]
    return list(dict.fromkeys(keys))  # driver_landmarks serves loss.mouth and loss.keypoints


def make_steps(config, graphdefs, perceptual_fn, id_fn=None):
    """Pure update functions: (state, batch) -> (state, metrics)."""
    g_def, d_def = graphdefs
    tx, sched = _optimizer(config)
    w = config.loss
    supervise_other = supervises_other(config)

    def generate(gen, batch):
        # Frames arrive at model.input_size; src and drv are returned at image_size, the size
        # the decoder draws (the same arrays when the two sizes are equal).
        src, drv, oth = (_to_float(batch[k]) for k in ("source", "driver", "other"))
        e_s, e_d, e_o = gen.encode(src), gen.encode(drv), gen.encode(oth)
        recon = gen.decode_latents(e_s, e_d["z_pose"], e_d["z_dyn"])
        cross = gen.decode_latents(e_s, e_o["z_pose"], e_o["z_dyn"])
        return gen.output_view(src), gen.output_view(drv), e_s, e_d, e_o, recon, cross

    def g_loss(g_params, state, batch):
        gen = nnx.merge(g_def, g_params, state["gen_rest"])
        disc = nnx.merge(d_def, jax.lax.stop_gradient(state["disc"]))
        src, drv, e_s, e_d, e_o, recon, cross = generate(gen, batch)
        terms = {"l1": losses.l1_loss(recon, drv), "perceptual": perceptual_fn(recon, drv)}
        if w.gan > 0 or w.feature_matching > 0:
            fake_feats, fake_logits = disc(recon)
            real_feats, _ = disc(drv)
            terms["gan"] = losses.hinge_g_loss(fake_logits)
            terms["feature_matching"] = losses.feature_matching_loss(real_feats, fake_feats)
        if w.consist > 0:
            terms["consist"] = losses.consistency_loss(gen.decode, e_d, e_s)
        if w.cross_id > 0 and id_fn is not None:
            terms["cross_id"] = losses.cross_identity_loss(id_fn, src, cross)
        if w.get("mouth", 0.0) > 0 or w.get("eyes", 0.0) > 0:
            terms.update(losses.facial_region_losses(recon, drv, batch["driver_landmarks"],
                                                     config.get("region_sigma", 0.3)))
        # The frames the motion losses read: source and driver, and with supervise_other also
        # the other identity's frame.
        coded = {"source": e_s, "driver": e_d}
        if supervise_other:
            coded["other"] = e_o
        terms.update(motion_terms(config, coded, batch))
        total, _ = losses.total_generator_loss(terms, dict(w))
        return total, (terms, recon)

    def d_loss(d_params, recon, real):
        disc = nnx.merge(d_def, d_params)
        _, real_logits = disc(real)
        _, fake_logits = disc(jax.lax.stop_gradient(recon))
        return losses.hinge_d_loss(real_logits, fake_logits)

    roll_deg = float(config.get("augment_roll_deg", 0.0))
    mirror_prob = augment_mirror_prob(config)
    aug_key = jax.random.key(config.seed + 0x70_11)
    mirror_key = jax.random.key(config.seed + 0x3177)

    def train_step(state, batch):
        if roll_deg > 0:
            batch = augment.camera_roll(batch, jax.random.fold_in(aug_key, state["step"]),
                                        roll_deg)
        if mirror_prob > 0:
            batch = augment.mirror(batch, jax.random.fold_in(mirror_key, state["step"]),
                                   mirror_prob)
        (g_total, (terms, recon)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(
            state["gen"], state, batch)
        updates, opt_gen = tx.update(g_grads, state["opt_gen"], state["gen"])
        gen = optax.apply_updates(state["gen"], updates)
        metrics = {"loss": g_total, **terms, "grad_norm": optax.global_norm(g_grads),
                   "lr": sched(state["step"])}
        disc, opt_disc = state["disc"], state["opt_disc"]
        if w.gan > 0 or w.feature_matching > 0:
            real = output_view(config.model, _to_float(batch["driver"]))
            d_val, d_grads = jax.value_and_grad(d_loss)(disc, recon, real)
            d_updates, opt_disc = tx.update(d_grads, opt_disc, disc)
            disc = optax.apply_updates(disc, d_updates)
            metrics["d_loss"] = d_val
        ema = loop.ema_update(state["ema"], gen, state["step"], config.ema_decay)
        new_state = dict(state, step=state["step"] + 1, gen=gen, disc=disc, ema=ema,
                         opt_gen=opt_gen, opt_disc=opt_disc)
        return new_state, metrics

    def sample_step(state, batch):
        gen = nnx.merge(g_def, state["ema"], state["gen_rest"])
        src, drv, _, _, _, recon, cross = generate(gen, batch)
        return jnp.stack([src, drv, recon, cross], 1)  # [B, 4, H, W, 3]

    return train_step, sample_step


def save_sample_grid(path: str, grid: np.ndarray) -> None:
    """grid: [B, 4, H, W, 3] in [-1, 1] → PNG rows of source | driver | recon | cross-id."""
    from vasa_jax.data import media

    b, k, h, w, _ = grid.shape
    img = np.clip((grid + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    img = img.transpose(0, 2, 1, 3, 4).reshape(b * h, k * w, 3)
    if "://" in path:  # a bucket workdir: write locally, then copy up
        import tempfile

        from etils import epath

        with tempfile.TemporaryDirectory() as tmp:
            local = media.write_png(os.path.join(tmp, "grid.png"), img)
            epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(path).write_bytes(local.read_bytes())
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    media.write_png(path, img)


# ----------------------------------------------------------------------------------------------
# Reading a trained model back.

def restore_generator(workdir: str, step: int | None = None, *, ema: bool = True):
    """(FaceLatentModel, config, step) from a stage-1 workdir: the EMA weights by default.

    Restores on one device; the discriminator and optimiser states are read but discarded.
    """
    config, (g_def, _), state = loop.restore_on_one_device(workdir, build_state_fns, "stage-1",
                                                           step)
    gen = nnx.merge(g_def, state["ema" if ema else "gen"], state["gen_rest"])
    return gen, config, int(state["step"])


# ----------------------------------------------------------------------------------------------
# The loop.


def train(config, workdir: str) -> dict:
    """Trains (or resumes) stage 1 in `workdir`; returns the last logged metrics."""
    from vasa_jax import distributed
    from vasa_jax.data import builders, pipelines
    from vasa_jax.models.vgg import make_perceptual

    jax.config.update("jax_threefry_partitionable", True)
    check(config.loss.cross_id == 0 or config.identity_net,
          f"loss.cross_id={config.loss.cross_id} needs a trained identity network: set "
          f"--config.identity_net=PATH (python -m vasa_jax.train.identity) or "
          f"--config.loss.cross_id=0")
    cross_clip = float(config.data.get("cross_clip_prob", 0.0))
    check(0.0 <= cross_clip <= 1.0, f"data.cross_clip_prob={cross_clip!r} is invalid: use a "
          "probability in [0, 1] (0: every pair from one clip)")
    roll_deg = float(config.get("augment_roll_deg", 0.0))
    check(0.0 <= roll_deg <= 45.0, f"augment_roll_deg={roll_deg!r} is invalid: use 0 (off) to "
          "45 degrees")
    augment_mirror_prob(config)
    size = input_size(config.model)
    check(config.data.dataset or int(config.data.synthtalk.resolution) == size,
          f"data.synthtalk.resolution={config.data.synthtalk.resolution} differs from the "
          f"model's input size {size}: set --config.data.synthtalk.resolution={size}")

    # Mesh.
    mesh, batch_sharding, local_batch = loop.setup_mesh(config)

    # Data.
    data_dir = config.data.data_dir or os.path.join(workdir, "data")
    sources = builders.open_sources(config.data, data_dir, image_size=size)
    first = sources["train"][0]
    check_motion_losses(config, first)
    identities = pipelines.record_identities(sources["train"]) if cross_clip > 0 else None
    data_iter = iter(pipelines.stage1_dataset(sources["train"], batch_size=local_batch,
                                              seed=config.seed, identities=identities,
                                              factors=stage1_factors(config, first),
                                              cross_clip_prob=cross_clip,
                                              cache_mb=config.data.get("cache_mb", 0.0)))
    loop.save_config(config, workdir)  # after every check: a refused config writes nothing

    # Model, optimiser, EMA: created already sharded (or restored onto this mesh).
    graphdefs, init, abstract, shardings = build_state_fns(config, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        save_interval_steps=config.ckpt_every, max_to_keep=config.keep_checkpoints)
    state = loop.restore_or_init(ckpt, init, abstract, shardings, jax.random.key(config.seed),
                                 data_iter)

    # Update steps.
    perceptual_fn = make_perceptual(config.loss_vgg_weights or None)
    id_fn = None
    if config.identity_net and config.loss.cross_id > 0:
        from vasa_jax.models.identity_net import load_identity_fn

        id_fn = load_identity_fn(config.identity_net)
        log.info("l_cross-id on (weight %g) with the identity network in %s",
                 config.loss.cross_id, config.identity_net)
    train_step, sample_step = make_steps(config, graphdefs, perceptual_fn, id_fn)
    train_step = jax.jit(train_step, in_shardings=(shardings, batch_sharding),
                         out_shardings=(shardings, None), donate_argnums=0)
    sample_step = jax.jit(sample_step, in_shardings=(shardings, batch_sharding),
                          out_shardings=sharding.replicated(mesh))  # every process can read it

    keys = ["source", "driver", "other", *motion_batch_keys(config)]

    def to_device(batch):
        return pipelines.global_batch({k: batch[k] for k in keys}, mesh)

    compiled_sample = []  # multi-process: compiled once by all processes before first use

    def on_sample(state, batch, step):
        if not compiled_sample:
            compiled_sample.append(distributed.compile_then_meet(sample_step, (state, batch),
                                                                 "sample_step"))
        grid = np.asarray(jax.device_get(compiled_sample[0](state, batch)))
        if jax.process_index() == 0:
            save_sample_grid(os.path.join(workdir, "samples", f"{step:07d}.png"), grid)

    # Loop.
    return loop.run(config, workdir, state=state, train_step=train_step, data_iter=data_iter,
                    to_device=to_device, ckpt=ckpt, on_sample=on_sample)


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

    config_flags.DEFINE_config_file("config", None, "configs/face_latent.py:ARG", lock_config=True)
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics.jsonl and samples go")
    flags.mark_flags_as_required(["config", "workdir"])
    from vasa_jax import distributed

    distributed.define_flags()
    app.run(main)
