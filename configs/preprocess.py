"""Real-video preprocessing (`vasa-jax preprocess`): VoxCeleb2 or any folder of videos.

    vasa-jax preprocess --config configs/preprocess.py:voxceleb2 --input ~/voxceleb2 \
        --data-dir ~/vasa_data [--workers 16] [--config.resolution=512]

Arguments: `voxceleb2` (the manual download at its native 224², JPEG), `voxceleb2_512` (512² as
VASA-1 trains; upsampled from 224²), `folder` (a folder of videos, ROOT/<speaker>/..., cut into
10 s clips), `tiny` (64² VoxCeleb2 layout: tests and CPU runs). Fields are documented in
`vasa_jax.data.preprocess` (layout, framing, splits) and `vasa_jax.data.face_crop` (aligner,
detector and the quality scores).
"""

import ml_collections

VARIANTS = {
    "voxceleb2": dict(layout="voxceleb2", resolution=224),
    "voxceleb2_512": dict(layout="voxceleb2", resolution=512),
    "folder": dict(layout="folder", resolution=256, clip_seconds=10.0, test_fraction=0.05),
    "tiny": dict(layout="voxceleb2", resolution=64, shard_size=4),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "voxceleb2"
    if name not in VARIANTS:
        raise ValueError(f"unknown preprocessing variant {name!r}: choose one of "
                         f"{', '.join(VARIANTS)}")
    config = ml_collections.ConfigDict(dict(
        layout="voxceleb2",
        resolution=224,            # output frames are resolution² (even, 16..2048)
        image_format="jpeg",       # jpeg (4:4:4) or png (lossless, ~4x larger)
        jpeg_quality=95,
        audio="mp4",               # mp4: the video's audio stream; aac: VoxCeleb2's aac tree
        clip_seconds=0.0,          # > 0: cut videos into records of this length; 0: one per file
        min_seconds=1.0,           # shorter clips / segments are skipped
        max_seconds=20.0,          # with clip_seconds=0: longer files keep their first max_seconds
        test_fraction=0.02,        # speakers held out when the input has no test part
        split_seed=0,
        shard_size=32,             # input files per output shard (the unit of resumption)
        aligner="center",          # center | box (needs a detector) | module:callable
        detector="",               # module:callable -> [N, 5] face boxes per frame; "" = none
        detect_every=5,            # run the detector on every n-th frame
        box_scale=1.8,             # the box aligner's crop side / face box side
        quality=ml_collections.ConfigDict(dict(
            min_sharpness=0.0,     # skip clips whose Laplacian-variance score is below (0 = off)
            min_face_size=0,       # skip clips whose face crop is smaller, in source px (0 = off)
            max_faces=0,           # skip clips with more faces on a frame (0 = off; needs detector)
        )),
    ))
    config.update(VARIANTS[name])
    return config
