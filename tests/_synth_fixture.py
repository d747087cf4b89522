"""One tiny SynthTalk data set per test session, shared by the builder and pipeline tests.

Import the fixture into a test module with `from _synth_fixture import synth_data  # noqa: F401`.
The prepared data set is cached at module level, so it is built once even though pytest
registers the fixture once per importing module.
"""

from __future__ import annotations

import dataclasses

import pytest

TINY = dict(resolution=64, num_frames=12, num_train_identities=4, num_test_identities=2,
            clips_per_identity=2, seed=0)

_CACHE: dict = {}


@dataclasses.dataclass
class SynthData:
    data_dir: str
    config: dict
    sources: dict  # split -> tfds ArrayRecordDataSource


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> SynthData:
    if "data" not in _CACHE:
        from vasa_jax.data import builders

        data_dir = str(tmp_path_factory.mktemp("tfds"))
        sources = builders.prepare_synthtalk(data_dir, **TINY)
        _CACHE["data"] = SynthData(data_dir=data_dir, config=dict(TINY), sources=sources)
    return _CACHE["data"]
