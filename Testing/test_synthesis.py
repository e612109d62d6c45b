"""The label-map image engine: labels in, image and truths out, on one geometry."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from MedAutoencoderLib.synthesis.engine import (SynthesisConfig, grid_to_indices, synthesize, to_tensors,
                                                warp_labels)
from MedAutoencoderLib.synthesis.sources import (AIR, CORTEX, GROUP_TISSUE, HEAD, VENTRICLE, WHITE, fill_holes,
                                                 prepare_ixi, prepare_synthseg)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.exists():
    SHARED_DATA = Path("/work/shared/data")

SMALL = SynthesisConfig(shape=(48, 56, 48))


def _head_map() -> dict:
    """A small head: ventricle inside white matter inside cortex inside a scalp shell, 2 mm voxels."""
    z, y, x = np.mgrid[0:60, 0:64, 0:56].astype(np.float32)
    r = np.sqrt(((z - 30) / 24) ** 2 + ((y - 32) / 28) ** 2 + ((x - 28) / 24) ** 2)
    groups = np.array([AIR, VENTRICLE, WHITE, CORTEX, HEAD], np.uint8)
    classes = np.zeros(r.shape, np.uint8)
    classes[r < 1.0] = 4
    classes[r < 0.85] = 3
    classes[r < 0.7] = 2
    classes[r < 0.2] = 1
    tissue = GROUP_TISSUE[groups[classes]]
    return {"classes": classes, "groups": groups, "tissue": tissue}


def test_a_label_map_gives_an_image_and_its_truths_on_the_output_grid():
    sample = synthesize(to_tensors(_head_map()), torch.Generator().manual_seed(0), SMALL)
    assert sample["image"].shape == (1, 48, 56, 48) and sample["image"].dtype == torch.float32
    assert sample["tissue"].shape == (48, 56, 48)
    assert set(torch.unique(sample["tissue"]).tolist()) <= {0, 1, 2, 3}
    assert torch.equal(sample["brain"], sample["tissue"] > 0)
    assert sample["brain"].sum() > 1000
    assert torch.isfinite(sample["image"]).all() and 0 <= sample["image"].min() and sample["image"].max() <= 1.5


def test_the_brain_mask_is_the_brain_labels_moved_by_the_same_deformation():
    label_map = to_tensors(_head_map())
    config = SynthesisConfig(**{**SMALL.__dict__, "cut_probability": 0.0, "elastic_std_mm": 4.0})
    for seed in range(3):
        sample = synthesize(label_map, torch.Generator().manual_seed(seed), config)
        moved = warp_labels((label_map["tissue"] > 0).long(), sample["grid"])
        assert torch.equal(moved > 0, sample["brain"])
        moved_tissue = warp_labels(label_map["tissue"].long(), sample["grid"])
        assert torch.equal(moved_tissue, sample["tissue"])


def test_the_grid_without_elastic_displacement_is_the_returned_affine():
    config = SynthesisConfig(**{**SMALL.__dict__, "elastic_std_mm": 0.0})
    sample = synthesize(to_tensors(_head_map()), torch.Generator().manual_seed(3), config)
    indices = grid_to_indices(sample["grid"], (60, 64, 56))
    out = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SMALL.shape], indexing="ij"), -1)
    expected = out @ sample["affine"][:3, :3].T + sample["affine"][:3, 3]
    assert torch.allclose(indices, expected, atol=1e-3)
    # a real rotation/scale, not the identity
    assert not torch.allclose(sample["affine"][:3, :3], torch.eye(3), atol=0.01)


def test_the_same_seed_gives_the_same_image_and_other_seeds_other_contrasts():
    label_map = to_tensors(_head_map())
    config = SynthesisConfig(**{**SMALL.__dict__, "cut_probability": 0.0, "strip_probability": 0.0})
    a = synthesize(label_map, torch.Generator().manual_seed(7), config)
    b = synthesize(label_map, torch.Generator().manual_seed(7), config)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["tissue"], b["tissue"])
    orderings = set()
    for seed in range(12):
        s = synthesize(label_map, torch.Generator().manual_seed(seed), config)
        means = [float(s["image"][0][s["tissue"] == t].mean()) for t in (1, 2, 3)]  # CSF, GM, WM
        orderings.add(tuple(np.argsort(means)))
    assert len(orderings) >= 3  # T1-like, T2-like, random...


@pytest.mark.parametrize("contrast, brightest, darkest", [("t1", 3, 1), ("t2", 1, 3), ("flair", 2, 1)])
def test_a_forced_contrast_orders_the_tissues_like_that_contrast(contrast, brightest, darkest):
    config = SynthesisConfig(**{**SMALL.__dict__, "cut_probability": 0.0, "strip_probability": 0.0,
                                "thick_probability": 0.0, "bias_std": 0.0, "gamma_std": 0.0, "class_jitter": 0.0})
    s = synthesize(to_tensors(_head_map()), torch.Generator().manual_seed(1), config, contrast=contrast)
    means = {t: float(s["image"][0][s["tissue"] == t].mean()) for t in (1, 2, 3)}
    assert max(means, key=means.get) == brightest and min(means, key=means.get) == darkest


def test_a_skull_stripped_draw_is_zero_outside_its_dilated_brain():
    config = SynthesisConfig(**{**SMALL.__dict__, "strip_probability": 1.0, "cut_probability": 0.0,
                                "strip_dilation_mm": (0.0, 0.0)})
    s = synthesize(to_tensors(_head_map()), torch.Generator().manual_seed(2), config)
    assert bool(s["stripped"])
    assert float(s["image"][0][~s["brain"]].abs().max()) == 0.0


def test_a_cut_field_of_view_cuts_image_and_truth_alike():
    config = SynthesisConfig(**{**SMALL.__dict__, "cut_probability": 1.0})
    label_map = to_tensors(_head_map())
    cut_seen = False
    for seed in range(6):
        s = synthesize(label_map, torch.Generator().manual_seed(seed), config)
        moved = warp_labels((label_map["tissue"] > 0).long(), s["grid"]) > 0
        assert not (s["brain"] & ~moved).any()  # the truth only loses voxels
        lost = moved & ~s["brain"]
        if lost.any():
            cut_seen = True
            assert float(s["image"][0][lost].abs().max()) == 0.0
    assert cut_seen


@pytest.mark.skipif(not (SHARED_DATA / "ixi_t1_2mm").exists(), reason="needs ../shared/data")
def test_real_label_maps_are_prepared_with_a_brain_of_plausible_size():
    subject = sorted(os.listdir(SHARED_DATA / "ixi_t1_2mm" / "t1"))[0][:-len("_T1.nii.gz")]
    ixi = prepare_ixi(subject, str(SHARED_DATA))
    brain_ml = (ixi["tissue"] > 0).sum() * 8 / 1000
    assert 1000 < brain_ml < 2000
    assert np.array_equal(fill_holes(ixi["tissue"] > 0), ixi["tissue"] > 0)
    assert (ixi["groups"][np.unique(ixi["classes"])] == HEAD).sum() >= 3  # the head outside the brain, clustered
    aseg = prepare_synthseg(str(SHARED_DATA / "synthseg_label_maps" / "training_seg_01.nii.gz"))
    assert aseg["classes"].shape == (128, 128, 128)
    assert 900 < (aseg["tissue"] > 0).sum() * 8 / 1000 < 2000
    sample = synthesize(to_tensors(ixi), torch.Generator().manual_seed(0), contrast="real")
    assert sample["image"].shape == (1,) + SynthesisConfig().shape
