"""Trains the SynthTalk identity embedding used by stage 1's cross-identity loss.

    python -m vasa_jax.train.identity --config configs/identity.py:tiny --workdir W

`IdentityNet` + `ArcFaceHead` (additive angular margin) are trained to classify the train
identities from single frames (every pose, expression, gaze and blink of those identities), then
evaluated on the held-out test identities by nearest-centroid matching across clips: the centroid
of each test identity's first clip is the gallery, every frame of its other clips is a query.
Writes `W/identity_net/` (net.json with the architecture and the metrics + orbax params) and
`W/metrics.jsonl`.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vasa_jax.models.identity_net import (
    ArcFaceHead,
    IdentityNet,
    arcface_loss,
    save_identity_net,
)
from vasa_jax.train.common import MetricsWriter, StepTimer, check_finite

log = logging.getLogger(__name__)


def embed_frames(net: IdentityNet, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 frames [N, H, W, 3] → unit-norm embeddings [N, dim] (float32 numpy)."""
    graphdef, state = nnx.split(net)

    @jax.jit
    def f(state, x):
        return nnx.merge(graphdef, state)(x.astype(jnp.float32) / 127.5 - 1.0)

    out = [np.asarray(f(state, frames[i:i + batch])) for i in range(0, len(frames), batch)]
    return np.concatenate(out)


def clip_matching_accuracy(embeddings: np.ndarray, identities: np.ndarray, clips: np.ndarray
                           ) -> dict:
    """Nearest-centroid identification: gallery = centroid of each identity's first clip,
    queries = every frame of its other clips. Returns accuracy, chance and cosine statistics."""
    ids = np.unique(identities)
    gallery = []
    for i in ids:
        first = clips[identities == i].min()
        c = embeddings[(identities == i) & (clips == first)].mean(0)
        gallery.append(c / np.linalg.norm(c))
    gallery = np.stack(gallery)
    first_clip = np.array([clips[identities == i].min() for i in ids])
    is_query = clips != first_clip[np.searchsorted(ids, identities)]
    q = embeddings[is_query]
    truth = np.searchsorted(ids, identities[is_query])
    sims = q @ gallery.T
    pred = sims.argmax(1)
    same = sims[np.arange(len(q)), truth]
    other = np.where(np.eye(len(ids), dtype=bool)[truth], np.nan, sims)
    cos_other = float(np.nanmean(other)) if len(ids) > 1 else float("nan")  # one identity
    return dict(accuracy=float(np.mean(pred == truth)), chance=1.0 / len(ids),
                queries=int(len(q)), cos_same=float(np.mean(same)), cos_other=cos_other)


def split_frames(source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All frames of a SynthTalk data source → (frames, identity per frame, clip index per frame)."""
    from vasa_jax.data import builders

    frames, ids, clips = [], [], []
    seen: dict[int, int] = {}
    for r in range(len(source)):
        rec = source[r]
        f = builders.decode_frames(rec["frames"])
        ident = int(np.asarray(rec["identity"]))
        clip = seen.get(ident, 0)
        seen[ident] = clip + 1
        frames.append(f)
        ids.append(np.full(len(f), ident, np.int64))
        clips.append(np.full(len(f), clip, np.int64))
    return np.concatenate(frames), np.concatenate(ids), np.concatenate(clips)


def train(config, workdir: str) -> dict:
    """Trains the identity network; returns the held-out metrics (also in net.json)."""
    from vasa_jax.data import builders, pipelines

    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data.data_dir or os.path.join(workdir, "data")
    st = config.data.synthtalk.to_dict()
    sources = builders.prepare_synthtalk(data_dir, **st)
    train_ids = builders.train_identity_ids(builders.SynthTalkConfig(**st))
    label_of = {int(i): k for k, i in enumerate(train_ids)}
    dataset = pipelines.stage1_dataset(sources["train"], batch_size=config.batch_size,
                                       seed=config.seed, factors=())

    rngs = nnx.Rngs(config.seed)
    net = IdentityNet(config.net.dim, tuple(config.net.channels), rngs=rngs)
    head = ArcFaceHead(config.net.dim, len(train_ids), rngs=rngs)
    graphdef, params = nnx.split((net, head))
    sched = optax.cosine_decay_schedule(config.lr, max(1, config.steps))
    tx = optax.adam(sched)
    opt_state = tx.init(params)

    def loss_fn(params, images, labels):
        net, head = nnx.merge(graphdef, params)
        return arcface_loss(net, head, images, labels, config.margin, config.scale)

    @jax.jit
    def step_fn(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    writer = MetricsWriter(workdir, tensorboard=False)
    timer = StepTimer()
    it = iter(dataset)
    try:
        for step in range(1, config.steps + 1):
            b = next(it)
            images = np.concatenate([b["source"], b["other"]]).astype(np.float32) / 127.5 - 1.0
            labels = np.asarray([label_of[int(i)] for i in
                                 np.concatenate([b["identity"], b["other_identity"]])], np.int32)
            params, opt_state, loss = step_fn(params, opt_state, images, labels)
            if step % config.log_every == 0 or step == config.steps:
                check_finite(step, {"loss": loss}, None)
                writer.write(step, {"loss": loss, "lr": sched(step),
                                    "steps_per_s": timer.tick(step)})
    finally:
        writer.close()

    net, _ = nnx.merge(graphdef, params)
    metrics = {}
    for split in ("train", "test"):
        frames, ids, clips = split_frames(sources[split])
        metrics[split] = clip_matching_accuracy(embed_frames(net, frames), ids, clips)
        log.info("%s identities: %s", split, metrics[split])
    arch = dict(dim=config.net.dim, channels=list(config.net.channels),
                image_size=config.data.synthtalk.resolution)
    save_identity_net(os.path.join(workdir, "identity_net"), net, arch, metrics)
    return metrics


def main(argv):
    del argv
    from absl import flags

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/identity.py:tiny", lock_config=True)
    flags.DEFINE_string("workdir", None, "where identity_net/ and metrics.jsonl go")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
