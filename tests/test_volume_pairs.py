"""Training pairs from the co-registered volumes (:mod:`cminet.volume_pairs`): whole volumes
are held out, the real tracer templates are only ever reporting pairs, and the simulated
uptake follows the tissue it is drawn for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cminet.runtime.imaging import read_image
from cminet.runtime.volume_io import load_volume
from cminet.volume_pairs import RECIPE, TISSUE_MAPS, Uptake, draw_uptake, simulate_functional, write_volume_pairs

pytestmark = pytest.mark.torch_free
VOLUMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes"
needs_volumes = pytest.mark.skipif(not (VOLUMES / "clinical").is_dir(), reason="the real volumes are not here")


def test_the_recipe_never_shares_a_volume_between_splits():
    files = {split: set(spec.mris.values()) | set((spec.real or {}).values()) for split, spec in RECIPE.items()}
    for a in files:
        for b in files:
            assert a == b or files[a].isdisjoint(files[b]), (a, b)
    seeds = [spec.seed for spec in RECIPE.values() if spec.simulated]
    assert len(seeds) == len(set(seeds))  # simulated draws differ between splits too
    assert all(spec.real is None for split, spec in RECIPE.items() if split != "test")


@needs_volumes
def test_simulated_uptake_follows_the_tissue_ratio():
    tissues = {name: load_volume(VOLUMES / file, name) for name, file in TISSUE_MAPS.items()}
    head = np.zeros(tissues["grey"].shape, bool)
    for modality, ratio in (("pet", 3.5), ("spect", 1.7)):
        uptake = Uptake(modality, grey_white=ratio, csf=0.1, scalp=0.0, fwhm_mm=0.0, noise=0.0,
                        palette="HOT_IRON", window_top=1.0)
        volume = simulate_functional(tissues, head, uptake, np.random.default_rng(0))
        grey = volume.data[tissues["grey"].data > 0.95].mean()
        white = volume.data[tissues["white"].data > 0.95].mean()
        assert grey / white == pytest.approx(ratio, rel=0.1)
    rng = np.random.default_rng(1)
    pet, spect = [draw_uptake("pet", rng) for _ in range(50)], [draw_uptake("spect", rng) for _ in range(50)]
    assert min(u.grey_white for u in pet) >= 2.5 and max(u.grey_white for u in spect) <= 2.0
    assert max(u.fwhm_mm for u in pet) <= 8.0 <= min(u.fwhm_mm for u in spect)


@needs_volumes
def test_written_pairs_keep_their_splits_apart_and_read_like_any_dataset(tmp_path):
    summary = write_volume_pairs(VOLUMES, tmp_path)
    assert json.loads((tmp_path / "volume_pairs.json").read_text())["counts"] == summary["counts"]
    mris = {split: {s["mri"] for s in sources} for split, sources in summary["sources"].items()}
    assert mris["train"].isdisjoint(mris["val"]) and mris["train"].isdisjoint(mris["test"])
    assert mris["val"].isdisjoint(mris["test"])
    real = {s["functional"].get("file") for split, sources in summary["sources"].items() for s in sources
            if split != "test"}
    assert real == {None}  # the real PET/SPECT templates appear only in the reporting split
    for pair_type in ("pet_mri", "spect_mri"):
        lists = {split: (tmp_path / pair_type / f"{split}.txt").read_text().split() for split in RECIPE}
        assert all(name.startswith(f"{split}-") for split, names in lists.items() for name in names)
        assert all(len(names) >= 20 for names in lists.values()), {k: len(v) for k, v in lists.items()}
        name = lists["val"][0]
        mri, other = read_image(tmp_path / pair_type / "mri" / name), read_image(tmp_path / pair_type / "other" / name)
        assert mri.ndim == 2 and other.shape == (*mri.shape, 3) and min(mri.shape) >= 64
