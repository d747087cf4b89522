"""Stage 1: face latent model (appearance volume, identity, pose, dynamics) — MegaPortraits style.

    python -m vasa_jax.train.face_latent --config configs/face_latent.py:tiny --workdir W

Arguments: `tiny` (64² images, tiny channels: CPU tests and demos), `tiny_run` (the tiny model
with the data, mouth/eye losses and schedule of the documented 30-minute CPU run,
docs/face_latent.md), `tiny_pose`
(tiny_run + head-pose supervision from SynthTalk's ground truth), `tiny_guided` (tiny_pose +
the source skip + supervision of the whole pose and of four expression values + drivers from the
identity's other clip + 128² frames for the motion encoder, 64² for the rest), or `vox512` (512² input,
V_app 16×64×64×96 as in MegaPortraits, id_dim 512, dyn_dim 256). Sizes and parameter counts:
`python benchmarks/face_latent_cost.py --config configs/face_latent.py:vox512`.
"""

import ml_collections

MODELS = {
    "tiny": dict(
        image_size=64, base_channels=16, max_channels=64,
        volume_size=16, volume_depth=4, volume_channels=8, app_blocks3d=1,
        encoder_channels=16, encoder_max_channels=64, encoder_downsamples=3,
        id_dim=32, dyn_dim=16, max_angle_deg=90.0, motion_pool="spatial", stem_stride=2,
        motion_stem_stride=0,  # 0: stem_stride
        # Spatial-softmax keypoints in the motion encoder (0: off) and the trunk stage they
        # read (negative: from the last).
        motion_keypoints=0, motion_keypoint_stage=-2,
        # A G×G mouth glimpse for the motion encoder (0: off; needs motion_keypoints >= 4
        # guided by loss.keypoints): see models/face.py MotionEncoder.
        motion_glimpse=0, motion_glimpse_span=0.55, motion_glimpse_channels=16,
        motion_glimpse_align="eyes",
        # Side of the frames the model takes (0: image_size). image_size × 2^k: the motion
        # encoder reads them at that size, everything else box-filtered to image_size.
        input_size=0,
        warp_channels=32, warp_upsamples=1, warp_blocks=1,
        decoder_channels=64, decoder_blocks3d=1, decoder_blocks2d=1, decoder_cond="none",
        # Source skip (models/face.py; the demo turns it on): full-resolution source features
        # sampled along the composed warps, joined before the decoder's last block; skip_blend
        # also blends in the warped source image through a predicted mask, skip_static also the
        # unwarped one (a background that does not move with the head). 0/False: off.
        skip_channels=0, skip_blend=False, skip_static=False,
    ),
    "vox512": dict(
        image_size=512, base_channels=64, max_channels=512,
        volume_size=64, volume_depth=16, volume_channels=96, app_blocks3d=6,
        encoder_channels=64, encoder_max_channels=768, encoder_downsamples=5,
        id_dim=512, dyn_dim=256, max_angle_deg=90.0, motion_pool="spatial", motion_stem_stride=0,
        motion_keypoints=0, motion_keypoint_stage=-2, input_size=0,
        motion_glimpse=0, motion_glimpse_span=0.55, motion_glimpse_channels=16,
        motion_glimpse_align="eyes",
        warp_channels=512, warp_upsamples=2, warp_blocks=2,
        decoder_channels=768, decoder_blocks3d=6, decoder_blocks2d=5, decoder_cond="none",
        skip_channels=0, skip_blend=False, skip_static=False,
    ),
}

MODELS["tiny_run"] = MODELS["tiny"]

TRAIN = {
    "tiny": dict(batch_size=8, lr=2e-4, steps=200, log_every=10, ckpt_every=100,
                 sample_every=100, warmup_steps=20),
    # Stops at whichever comes first: `steps` or `max_train_minutes` of training.
    # lr 1e-3 with Adam's usual b1 (no GAN in these runs, see get_config).
    "tiny_run": dict(batch_size=8, lr=1e-3, adam_b1=0.9, steps=6000, log_every=50,
                     ckpt_every=500, sample_every=1000, warmup_steps=100,
                     max_train_minutes=30.0),
    "vox512": dict(batch_size=32, lr=2e-4, steps=500_000, log_every=100, ckpt_every=5_000,
                   sample_every=5_000, warmup_steps=2_000),
}

DISC = {
    "tiny": dict(num_scales=2, base_channels=16, num_layers=2, max_channels=64),
    "tiny_run": dict(num_scales=2, base_channels=16, num_layers=2, max_channels=64),
    "vox512": dict(num_scales=3, base_channels=64, num_layers=3, max_channels=512),
}

DATA = {
    # Many identities, short clips: with 48 identities the encoders memorised identities
    # (probes fitted on train frames, chance on held-out ones); 384 × 2 × 25 frames renders
    # in ~2 min on one core.
    "tiny_run": dict(resolution=64, num_frames=25, num_train_identities=384,
                     num_test_identities=8, clips_per_identity=2),
    # SynthTalk sizes (see configs/synthtalk.py); real data plugs in with issue 7's builders.
    "tiny": dict(resolution=64, num_frames=25, num_train_identities=8, num_test_identities=2,
                 clips_per_identity=2),
    "vox512": dict(resolution=512, num_frames=100, num_train_identities=2000,
                   num_test_identities=100, clips_per_identity=4),
}


# tiny_pose = tiny_run + the head-pose loss from SynthTalk's truth; tiny_guided = tiny_pose +
# the source skip that copies the portrait (warped or where it is) + supervision of the whole
# head pose and of four expression values (set in get_config).
for _table in (MODELS, TRAIN, DISC, DATA):
    _table["tiny_pose"] = _table["tiny_run"]
    _table["tiny_guided"] = _table["tiny_run"]
# tiny_guided trains on twice the identities: at 1,000 steps, 768 instead of 384 raised held-out
# rotation R² 0.62 -> 0.69 (roll 0.40 -> 0.57) and mouth R² 0.22 -> 0.33 (opening 0.69 -> 0.83)
# with the probes fitted on the same 768 identities, at -0.05 dB self / +0.08 dB cross PSNR
# (docs/face_latent.md, session 12). Session 28 doubled it again, to 1,536: by then a run's
# ~4,200 steps had opened a gap between seen and new faces (rotation R² 0.977 on held-out halves
# of the train identities, 0.945 on held-out identities, seed 1) — the encoder learns the
# training faces' pose quirks. At 1,536, seeds 0 / 1 read held-out rotation R² 0.955 -> 0.959
# and 0.945 -> 0.952, mouth 0.823 -> 0.823 and 0.813 -> 0.839, with 3-7% fewer steps
# (docs/face_latent.md, session 28). The 128² render takes ~12 minutes on 2
# cores (768: about half), before the 30 training minutes.
DATA["tiny_guided"] = dict(DATA["tiny_run"], num_train_identities=1536)
# tiny_guided's frames are rendered at 128² for the motion encoder (model.input_size, set in
# get_config); everything else sees them box-filtered to 64² (docs/face_latent.md, session 17).
DATA["tiny_guided"]["resolution"] = 128


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name not in MODELS:
        raise ValueError(f"unknown face_latent variant {name!r}: choose one of {', '.join(MODELS)}")
    config = ml_collections.ConfigDict()
    config.variant = name
    config.seed = 0
    config.model = ml_collections.ConfigDict(MODELS[name])
    config.max_train_minutes = 0.0  # 0: no time limit
    config.update({k: v for k, v in TRAIN[name].items() if k != "adam_b1"})
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))  # 0: all
    config.disc = ml_collections.ConfigDict(DISC[name])
    config.data = ml_collections.ConfigDict(dict(
        data_dir="",  # empty: WORKDIR/data (a local or a bucket path)
        # empty: SynthTalk (below); else a `vasa-jax preprocess` output under data_dir, e.g.
        # "voxceleb2/r64_jpeg_1a2b3c4d" (the command prints it), or its full path.
        dataset="",
        synthtalk=ml_collections.ConfigDict(dict(DATA[name], seed=0)),
        # The share of training pairs whose driver comes from another clip of the source's
        # identity (0: source and driver always from one clip). Reads every record's identity
        # once at start.
        cross_clip_prob=0.0,
        # MiB of decoded training clips each process keeps (pipelines.DecodedClipCache): the
        # same batches, without re-reading and PNG-decoding a clip every time it is drawn.
        # Size it to hold the decoded training set (frames × R² × 3 bytes); 0: no cache.
        cache_mb=0.0))
    # Camera-roll augmentation (train/augment.py): each training pair turned by one random
    # angle in ±augment_roll_deg about the image centre, its roll, head centre and landmarks
    # with it, so the motion encoder cannot read a clip's tilt off who is in it. 0: off (at 1,000
    # steps, 8 degrees lowered held-out roll R² 0.41 -> 0.22: docs/face_latent.md, session 10).
    config.augment_roll_deg = 0.0
    # Left-right mirror augmentation (train/augment.py): each training example (source, driver
    # and other frame together) flipped with this probability, yaw and roll negated, head centre
    # and landmarks mirrored (left/right names swapped). 0: off. tiny_guided leaves it off: at 0.5,
    # the full recipe at equal steps, seeds 0 / 1, read rotation R² 0.936 / 0.937 and mouth
    # 0.812 / 0.810 against session 23's 0.939 / 0.926 and 0.807 / 0.802 (inside the seed
    # spread), z_dyn's identity probe 0.020 / 0.045 against 0.043 / 0.062 (docs/face_latent.md,
    # session 25).
    config.augment_mirror_prob = 0.0
    config.grad_clip = 1.0
    config.weight_decay = 0.0
    config.ema_decay = 0.999
    config.keep_checkpoints = 3
    # A torchvision-layout VGG19 weight file (.safetensors/.npz) for the perceptual loss; empty
    # falls back to MS-SSIM (logged), since no weights can be downloaded here.
    config.loss_vgg_weights = ""
    config.loss = ml_collections.ConfigDict(dict(
        l1=1.0, perceptual=1.0, gan=0.1, feature_matching=1.0, consist=1.0,
        # l_cross-id needs a trained identity network (config.identity_net); off until one
        # is trained on SynthTalk identities.
        cross_id=0.0,
        # Head-pose supervision of z_pose's angles from a pose estimator (face-vid2vid style).
        # On SynthTalk the estimator is the ground truth; real data needs a pluggable
        # estimator (not yet), so it is off by default.
        head_pose=0.0,
        # Local L1 around the driver's mouth / eyes (LivePortrait-style regional losses): the
        # landmarks come from SynthTalk's truth here, from a landmark detector on real data.
        mouth=0.0, eyes=0.0,
        # Anchors z_dyn[:, :2] to the frame's mouth opening and eye closure (0…1): SynthTalk's
        # truth here, a landmark detector's lip/eyelid distances on real video (not yet).
        expression=0.0,
        # Supervision of z_pose's image-plane head centre and log-scale (head_pose covers the
        # angles): SynthTalk's truth here, a face tracker's head centre and size on real video.
        head_position=0.0,
        # Landmark guidance of the motion encoder's first keypoints (model.motion_keypoints) to
        # the first keypoint_landmarks of synthtalk.LANDMARKS: SynthTalk's truth here, a
        # detector's on real video.
        keypoints=0.0,
        # Anchors the two z_dyn components after loss.expression's to the drawn mouth's log
        # half-width and half-opening in head units (what one frame shows of the mouth):
        # SynthTalk's truth here, a 3D face tracker's on real video.
        mouth_geometry=0.0,
        # Anchor the next z_dyn components to the clip's emotion as a one-hot (5) and to the
        # frame's eye-in-head gaze (yaw, pitch; train.face_latent.EYE_GAZE_RANGE): SynthTalk's
        # truth here, an emotion recogniser's class probabilities and a gaze estimator's
        # angles on real video. Packed after expression and mouth_geometry
        # (train.face_latent.anchor_layout).
        emotion=0.0, gaze=0.0))
    # How many z_dyn components loss.expression anchors: 2 (mouth opening, eye closure) or 4
    # (+ mouth width and rounding).
    config.expression_dims = 2
    # The motion losses (head_pose, head_position, expression) also read the batch's frame of
    # another identity: 1.5× the supervised frames for one more motion-encoder pass, forward
    # and backward (~7% more time per tiny_guided step; with l_cross-id on, the forward pass is
    # paid already). The other encoders' outputs for that frame stay unused; XLA drops them.
    config.supervise_other = False
    # loss.expression as a squared error (regresses to the mean: learns rare blinks) instead of
    # L1 (the median).
    config.expression_squared = False
    # Window of the mouth/eye losses: Gaussian sigma as a fraction of the inter-ocular distance.
    config.region_sigma = 0.3
    # loss.head_pose's unit per angle (yaw, pitch, roll): the degrees of error that cost 1.
    # Units by each angle's spread, (40, 32, 16), traded yaw for roll at 1,000 steps (roll R²
    # 0.41 → 0.46, yaw 0.61 → 0.59, −0.13 dB: docs/face_latent.md, session 11).
    config.head_pose_scale_deg = (30.0, 30.0, 30.0)
    # How many of synthtalk.LANDMARKS loss.keypoints guides, from the first: 4 (eyes, nose tip,
    # mouth centre: fixed on the face) or up to 8 (+ the mouth's corners and inner lip edges,
    # which move with the mouth). Guiding all 8 read mouth R² 0.782 → 0.762 and rotation 0.851
    # → 0.855 for the motion encoder alone at 1,200 steps (docs/face_latent.md, session 23).
    config.keypoint_landmarks = 4
    config.identity_net = ""
    config.adam_b1 = TRAIN[name].get("adam_b1", 0.5)  # 0.5: the usual choice with a GAN
    if name in ("tiny_run", "tiny_pose", "tiny_guided"):
        # The 30-minute CPU runs train on reconstruction alone (L1 + MS-SSIM/VGG): the GAN
        # terms, l_consist and l_cross-id each cost 20–40% of a step (two or three extra
        # decodes) and pay off only over far longer runs than 30 CPU minutes. Turn them back
        # on with --config.loss.gan=0.1 --config.loss.feature_matching=1 ... (l_cross-id needs
        # --config.identity_net from configs/identity.py).
        config.loss.update(dict(gan=0.0, feature_matching=0.0, consist=0.0))
        # The mouth is ~1% of a 64² frame: windowed L1 around the driver's mouth and eyes, and
        # a decoder that sees z_dyn, so the inside of an opening mouth can be drawn
        # (docs/face_latent.md: held-out mouth-opening R² 0.19 → 0.51 in the same 30 minutes).
        config.loss.update(dict(mouth=1.0, eyes=0.5))
        config.model.decoder_cond = "dyn"
    if name in ("tiny_pose", "tiny_guided"):
        config.loss.head_pose = 1.0
    if name == "tiny_guided":
        # The measured-supervision recipe (docs/face_latent.md, session 8): the skip with both
        # copies (a fixed camera's background stays put instead of moving with the head), the
        # head's image position and size, and mouth opening/width/rounding and eye closure in
        # z_dyn[:, :4] — the readings a face tracker and a landmark detector give on real video.
        config.model.update(dict(skip_channels=16, skip_blend=True, skip_static=True))
        config.loss.update(dict(head_position=1.0, expression=1.0))
        config.expression_dims = 4
        config.expression_squared = True
        # The motion encoder reads the frame at 128² (a stride-2 stem, so its first stage has
        # the 64² side and cost of session 8's full-resolution stem): a blink, the mouth's width
        # or 2° of roll are a pixel or less at 64². The appearance, identity and skip encoders,
        # the decoder and every loss work on the 2×2 box filter, SynthTalk's 64² render at
        # supersample 2. Same parameters and FLOPs. Two seeds at 30 minutes on 64 held-out
        # identities against session 16's 64² frames: rotation R² 0.883/0.851 → 0.898/0.882
        # (roll 0.77/0.69 → 0.80/0.75), mouth R² 0.761/0.724 → 0.786/0.770, blink 0.10/0.04 →
        # 0.66/0.29; self and cross PSNR over copy-source +0.3 / +0.1 dB (docs/face_latent.md,
        # session 17).
        config.model.input_size = 128
        config.model.motion_stem_stride = 2
        # tiny_run's 6,000-step cosine schedule, cut by the 30 minutes. Sessions 15–25 used
        # 4,000 steps, which a 30-minute run stopped at ~2,300–2,800 (1.2–1.6 steps/s) with
        # the learning rate at ~0.3–0.4 of its peak; session 18 found that a schedule ending
        # inside the budget reads worse on every figure. Session 26's faster step (2.3–2.4
        # steps/s: ~4,200 steps in 30 minutes) would end a 4,000-step schedule just inside the
        # budget, so the schedule went to 6,000 (stopping at ~70% of it, lr ~0.2 of peak). Session
        # 27 lengthened it to 10,000: the run stops at ~44% with lr ~0.6 of peak. At equal steps
        # (~4,400), seeds 0 / 1: rotation R² 0.953 → 0.955 and 0.942 → 0.945 (session 26's
        # seed 1), mouth 0.807 → 0.823 and 0.810 → 0.813, self PSNR +0.13 / +0.12 dB; small,
        # inside the seed spread, but every figure moved the same way (docs/face_latent.md,
        # session 27).
        config.steps = 10000
        # The supervised terms weigh more (head pose 4, expression 3) and also read the batch's
        # frame of another identity. Two seeds at 30 minutes on 64 held-out identities against
        # session 17's head pose 2 / expression 1 on source and driver only: rotation R²
        # 0.898/0.882 → 0.912/0.909, mouth R² 0.786/0.770 → 0.819/0.807, blink 0.66/0.29 →
        # 0.82/0.75, self PSNR −0.18/−0.16 dB and cross −0.17/−0.20 dB (both still met), with
        # 12–13% fewer steps (docs/face_latent.md, session 19). An earlier doubling of head pose
        # (1 → 2) had read rotation R² 0.823 → 0.825 and mouth 0.61 → 0.65 at 3,400 steps.
        config.loss.update(dict(head_pose=4.0, expression=3.0))
        config.supervise_other = True
        # 80% of the drivers from the identity's other clip: within a 1 s clip the head moves
        # 3–9× less than between two people (RMS), across clips as much; cross-identity PSNR
        # 22.27 → 24.06 dB at 3,400 steps (docs/face_latent.md, session 9).
        config.data.cross_clip_prob = 0.8
        # The 3,072 training clips decoded take ~3,600 MiB: all fit (sessions 27-28).
        config.data.cache_mb = 4096.0
        # 16 spatial-softmax keypoints on the motion trunk's 32² stage; the first four follow
        # SynthTalk's eye, nose-tip and mouth landmarks (loss.keypoints 0.25, in units of ~1.3
        # px at 128²). The motion encoder alone, 1,200 steps, seed 0, 64 held-out identities:
        # rotation R² 0.824 → 0.851 (roll 0.63 → 0.70), mouth 0.786 → 0.782; unguided
        # keypoints 0.815 / 0.787; guidance at weight 1 costs the mouth 0.08
        # (docs/face_latent.md, session 22).
        config.model.update(dict(motion_keypoints=16, motion_keypoint_stage=0))
        config.loss.keypoints = 0.25
        # Head-pose units by each angle's spread in the data (std yaw 11.2°, pitch 9.0°, roll
        # 4.6°), yaw's kept at 30°: a degree of roll costs 2.5× what it did. The motion encoder
        # alone, 1,200 steps: rotation R² 0.851 → 0.870 (roll 0.70 → 0.75), mouth 0.782 → 0.781;
        # full recipe, 30 minutes: rotation 0.927 → 0.939 (seed 0; roll 0.86 → 0.89) and 0.926
        # (seed 1), a gain inside the seeds' spread; mouth 0.817 → 0.807 / 0.802
        # (docs/face_latent.md, session 23).
        config.head_pose_scale_deg = (30.0, 24.0, 12.0)
    return config
