"""The bundled learned brain extractor on real scans it never trained on, its geometry and its refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from MedAutoencoderLib.brain.extractor import (MODEL_FILE, NoBrainError, _edge_share, _filled_region, _within,
                                               extract_brain, load_extractor)
from MedAutoencoderLib.preprocessing.morphology import bounding_box
from MedAutoencoderLib.errors import ConfigurationError, InputImageError, ModelFileError
from MedAutoencoderLib.synthesis.sources import ixi_brain_reference

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.exists():
    SHARED_DATA = Path("/work/shared/data")
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "ixi_t1_2mm").exists(), reason="needs ../shared/data")
SPLIT = json.loads((Path(__file__).resolve().parents[1] / "scripts" / "ixi_split.json").read_text())


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _ixi(subject: str):
    t1 = sitk.ReadImage(str(SHARED_DATA / "ixi_t1_2mm" / "t1" / f"{subject}_T1.nii.gz"), sitk.sitkFloat32)
    ref = ixi_brain_reference(str(SHARED_DATA / "ixi_t1_2mm" / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"))
    return t1, ref


def test_the_bundled_model_loads_with_weights_only_and_is_small():
    network, config = load_extractor()
    assert Path(MODEL_FILE).stat().st_size < 5e6
    assert sum(p.numel() for p in network.parameters()) < 1e6
    assert config.spacing_mm == 2.0


def test_a_missing_or_foreign_model_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="missing"):
        load_extractor(str(tmp_path / "none.pt"))
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="foreign.pt: not a brain extractor"):
        load_extractor(str(foreign))


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("subject", SPLIT["test"][:3])
def test_held_out_ixi_heads_get_their_brain(subject):
    t1, ref = _ixi(subject)
    result = extract_brain(t1, name=subject)
    assert dice(sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(ref)) >= 0.9
    assert 900 < result.brain_ml < 2200


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("folder, name", [("brats_glioma_case", n) for n in ("t1n", "t1c", "t2w", "t2f")]
                         + [("ms_lesion_patient26", n) for n in ("T1", "T1POST", "T2", "FLAIR")])
def test_a_skull_stripped_scan_comes_back_whole(folder, name):
    """Its brain is its whole non-zero region (holes filled) where the prediction, dilated by 6 mm, reaches: the
    MS patient's stripping keeps CSF and meninges beyond the extractor's brain, up to 10 mm off it at the vertex."""
    image = sitk.ReadImage(str(SHARED_DATA / folder / f"{name}.nii.gz"), sitk.sitkFloat32)
    result = extract_brain(image, name=name)
    reference = ndi.binary_fill_holes(sitk.GetArrayViewFromImage(image) != 0)
    assert result.stripped
    assert dice(sitk.GetArrayViewFromImage(result.mask), reference) >= 0.95


@pytest.mark.parametrize("seed", range(4))
def test_filled_region_is_scipys_3d_fill(seed):
    """Cavities closed in 3D are filled, holes open to the array's edge are not; with and without holes."""
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random((20, 26, 30)), 1.5) > 0.5
    mask[4:16, 5:20, 6:24] = True
    if seed % 2 == 0:
        mask[7:12, 9:15, 10:18] = False  # a cavity
    expected = ndi.binary_fill_holes(mask)
    assert (expected.sum() > mask.sum()) == (seed % 2 == 0)
    np.testing.assert_array_equal(_filled_region(mask), expected)


@pytest.mark.parametrize("seed", range(6))
def test_the_edge_share_in_the_brains_box_is_the_whole_grids(seed):
    """extract_brain measures the brain's surface on the field of view's edge in the brain's box grown by one voxel:
    the same share as on the whole grid, also for a brain touching the grid's border or the scan's edge."""
    rng = np.random.default_rng(seed)
    brain = ndi.gaussian_filter(rng.random((24, 30, 28)), 2.0) > 0.52
    brain[:, :, :3] |= seed % 2 == 0  # on the grid's border
    inside = np.ones_like(brain)
    inside[:, 22:, :] = seed % 3 != 0  # a field of view that ends inside the grid
    box = bounding_box(brain, 1)
    assert _edge_share(brain[box], inside[box]) == _edge_share(brain, inside) > 0


def test_the_reach_of_a_stripped_brain_is_a_ball():
    """Dilated by the same distance in every direction: iterated 6-neighbour dilations (as before) reached only
    radius / sqrt(3) along a diagonal, and cut a stripped scan's brain along its oblique surfaces."""
    point = np.zeros((9, 9, 9), bool)
    point[4, 4, 4] = True
    reach = _within(point, 3.0)
    offsets = np.argwhere(reach) - 4
    assert (offsets ** 2).sum(axis=1).max() == 9 and len(offsets) == 123  # every voxel of the radius-3 ball
    assert reach[6, 6, 5] and not reach[7, 5, 4]  # offsets (2, 2, 1): 3 voxels away; (3, 1, 0): 3.16


@needs_shared
@pytest.mark.slow
def test_the_healthy_head_with_skull_gets_a_plausible_brain():
    head = sitk.ReadImage(str(SHARED_DATA / "healthy_t1_head" / "chris_t1.nii.gz"), sitk.sitkFloat32)
    result = extract_brain(head, name="chris_t1.nii.gz")
    assert 1000 < result.brain_ml < 1800
    mask = sitk.GetArrayViewFromImage(result.mask) > 0
    # the scalp and skull (the head's outer 6 mm) are not brain, as in test_real_data's registration check
    from MedAutoencoderLib.preprocessing.prepare import otsu_foreground

    head_mask = otsu_foreground(head)
    inner = sitk.BinaryErode(head_mask, [int(round(6 / s)) for s in head.GetSpacing()])
    scalp = sitk.GetArrayFromImage(head_mask).astype(bool) & ~sitk.GetArrayFromImage(inner).astype(bool)
    assert mask[scalp].mean() < 0.05


@needs_shared
@pytest.mark.slow
def test_an_oblique_anisotropic_scan_gets_its_mask_on_its_exact_grid():
    """Geometry: the mask lies on the input's own grid (size, spacing, origin, direction), and matches the
    reference carried onto that grid."""
    t1, ref = _ixi(SPLIT["test"][3])
    rotation = sitk.VersorTransform((0.2, 0.1, 0.3), 0.4)
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(t1.GetDirection()).reshape(3, 3)
    grid = sitk.Image([150, 130, 56], sitk.sitkFloat32)
    grid.SetSpacing((1.3, 1.7, 4.2))
    grid.SetDirection(direction.ravel().tolist())
    centre = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()])
    grid.SetOrigin((np.array(centre) - direction @ ((np.array(grid.GetSize()) - 1) / 2 * np.array(grid.GetSpacing())))
                   .tolist())
    oblique = sitk.Resample(t1, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ref_on = sitk.Resample(ref, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    result = extract_brain(oblique, name="oblique")
    mask = result.mask
    assert mask.GetSize() == oblique.GetSize()
    assert np.allclose(mask.GetSpacing(), oblique.GetSpacing())
    assert np.allclose(mask.GetOrigin(), oblique.GetOrigin())
    assert np.allclose(mask.GetDirection(), oblique.GetDirection())
    assert dice(sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(ref_on)) >= 0.9
    # detection's way: no mask on the full grid, the mask made on the (axis-aligned, 1.5 mm) model grid instead
    lazy = extract_brain(oblique, name="oblique", on_input_grid=False)
    assert lazy.mask is None and np.array_equal(lazy.mask_on(oblique), sitk.GetArrayViewFromImage(mask) > 0)
    model_grid = sitk.Image([128, 128, 112], sitk.sitkUInt8)
    model_grid.SetSpacing((1.5, 1.5, 1.5))
    model_grid.SetOrigin((np.array(lazy.centre_lps) - 1.5 * np.array([127, 127, 111]) / 2).tolist())
    nearest = sitk.Resample(mask, model_grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert dice(lazy.mask_on(model_grid), sitk.GetArrayViewFromImage(nearest)) >= 0.98
    where = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0).mean(0)[::-1]
    assert np.linalg.norm(lazy.centre_lps - np.array(mask.TransformContinuousIndexToPhysicalPoint(where.tolist()))) < 2


def _phantom(kind: str) -> sitk.Image:
    """As Testing/test_detection.py's: a crude abdomen, knee (thigh around a femur) or a uniform head-sized
    ellipsoid, 2 mm, with noise."""
    z, y, x = np.mgrid[0:100, 0:128, 0:128].astype(np.float32)
    values = np.zeros(z.shape, np.float32)
    if kind == "ellipsoid":
        values[((x - 64) / 36) ** 2 + ((y - 64) / 45) ** 2 + ((z - 50) / 36) ** 2 < 1] = 600
    elif kind == "knee":
        values[((x - 64) / 30) ** 2 + ((y - 64) / 30) ** 2 < 1] = 300
        values[((x - 64) / 12) ** 2 + ((y - 64) / 12) ** 2 < 1] = 800
    else:
        values[((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1] = 200
        values[((x - 45) / 15) ** 2 + ((y - 60) / 12) ** 2 + ((z - 50) / 30) ** 2 < 1] = 500
        values[((x - 85) / 8) ** 2 + ((y - 70) / 8) ** 2 + ((z - 50) / 20) ** 2 < 1] = 700
        values[((x - 64) / 5) ** 2 + ((y - 85) / 5) ** 2 < 1] = 900
    values = np.abs(values + np.random.default_rng(0).normal(0, 20, values.shape)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def test_a_scan_without_a_brain_is_refused_naming_the_file():
    with pytest.raises(NoBrainError, match="^abdomen.nii.gz: it does not look like a brain MRI") as info:
        extract_brain(_phantom("abdomen"), name="abdomen.nii.gz")
    assert isinstance(info.value, InputImageError) and "\n" not in str(info.value)


def test_a_scan_where_nothing_is_brain_is_refused_naming_the_file():
    """An empty scan (all zero): no voxel is brain, which is refused as too little brain, not a failure inside."""
    empty = sitk.Image([80, 70, 60], sitk.sitkFloat32)
    empty.SetSpacing((1.5, 1.5, 1.5))
    assert extract_brain(empty, refuse=False).brain_ml == 0
    with pytest.raises(NoBrainError, match=r"^empty.nii.gz: it does not show a whole brain: the brain extractor "
                                           r"found 0 mL of brain"):
        extract_brain(empty, name="empty.nii.gz")


def test_a_limb_is_refused_by_the_length_of_its_brain():
    """The extractor finds a confident 'brain' of a brain's volume in the knee (1446 mL, confidence 0.89), but it
    is a cylinder 270 mm long; brains are 150-185 mm (IXI validation heads)."""
    with pytest.raises(NoBrainError, match=r"^knee.nii.gz: it does not look like a brain MRI: the brain extractor's "
                                           r"'brain' is 2\d\d mm long \(a brain is at most 240 mm\)"):
        extract_brain(_phantom("knee"), name="knee.nii.gz")
    assert 150 < extract_brain(_phantom("ellipsoid"), refuse=False).length_mm < 200


def test_a_head_shaped_phantom_is_refused_by_a_brain_model_with_the_extractor():
    """The extractor alone takes a uniform ellipsoid of a head's size for a brain; the brain foreground's tissue
    contrast check refuses it."""
    from MedAutoencoderLib.config import PreprocessConfig
    from MedAutoencoderLib.preprocessing.prepare import prepare_volume

    with pytest.raises(InputImageError, match="^ellipsoid.nii.gz: it shows no brain tissue contrast"):
        prepare_volume(_phantom("ellipsoid"), PreprocessConfig(foreground="brain"), name="ellipsoid.nii.gz")


@needs_shared
@pytest.mark.slow
def test_a_slab_with_little_brain_is_refused():
    t1, _ = _ixi(SPLIT["test"][4])
    oriented = sitk.DICOMOrient(t1, "LPS")
    top = oriented[:, :, int(0.8 * oriented.GetSize()[2]):]
    with pytest.raises(NoBrainError, match="slab.nii.gz: it"):
        extract_brain(top, name="slab.nii.gz")


def test_brain_models_use_the_extractor_by_default_and_the_registration_on_request():
    from MedAutoencoderLib.io.loaded_model import brain_foreground, load_model

    assert load_model(device="cpu").record.preprocess.foreground == "brain"  # the bundled model
    assert load_model(device="cpu", foreground="template").record.preprocess.foreground == "template"
    assert brain_foreground("brain", None, Path("m.pt")) == "brain"
    assert brain_foreground("template", None, Path("m.pt")) == "brain"
    assert brain_foreground("brain", "template", Path("m.pt")) == "template"
    assert brain_foreground("otsu", None, Path("m.pt")) == "otsu"
    with pytest.raises(ConfigurationError, match="m.pt was trained with the 'otsu' foreground, not on brains"):
        brain_foreground("otsu", "brain", Path("m.pt"))


def _template_at_2mm() -> sitk.Image:
    """The bundled MNI template (skull-stripped) on the demo's 2 mm grid."""
    from MedAutoencoderLib.data import template as bundled_template

    template = bundled_template.load_template()
    return sitk.Resample(template, [100, 116, 96], sitk.Transform(), sitk.sitkLinear, template.GetOrigin(),
                         (2.0, 2.0, 2.0), template.GetDirection(), 0.0, sitk.sitkFloat32)


@pytest.mark.slow
def test_the_brain_foreground_of_a_skull_stripped_template_brain_is_its_brain():
    """The bundled MNI template (skull-stripped) on the demo's 2 mm grid: the model grid's foreground is its brain."""
    from MedAutoencoderLib.config import PreprocessConfig
    from MedAutoencoderLib.preprocessing.prepare import prepare_volume

    scan = _template_at_2mm()
    prepared = prepare_volume(scan, PreprocessConfig(foreground="brain"), name="template.nii.gz")
    on_input = sitk.GetArrayFromImage(prepared.to_input_grid(prepared.foreground.astype(np.uint8), nearest=True))
    stripped = sitk.GetArrayViewFromImage(scan) > 0.05 * sitk.GetArrayViewFromImage(scan).max()
    assert dice(on_input, stripped) > 0.9


def test_the_bundled_model_keeps_a_threshold_for_each_brain_mask():
    """Calibrated on the same healthy subjects with each mask (scripts/calibrate_default_model.py): the one of the
    mask in use applies."""
    from MedAutoencoderLib.io.loaded_model import load_model

    with_extractor = load_model(device="cpu").record
    with_registration = load_model(device="cpu", foreground="template").record
    assert set(with_extractor.calibration["by_foreground"]) == {"brain", "template"}
    assert with_extractor.threshold == with_extractor.calibration["by_foreground"]["brain"]
    assert with_registration.threshold == with_registration.calibration["by_foreground"]["template"]
    assert with_extractor.threshold != with_registration.threshold


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_the_extractor_runs_on_the_device_asked_for(device):
    """The bundled template on a 2 mm grid: the network on ``device`` gives the CPU's mask (on a GPU, with other
    convolution kernels, all but a few edge voxels: the check a GPU machine runs before detection may extract
    there), and it is loaded once per device however the device is named."""
    scan = _template_at_2mm()
    on_cpu = extract_brain(scan, extractor=load_extractor())
    on_device = extract_brain(scan, device=device)
    network, _ = load_extractor(device=torch.device(device))
    assert next(network.parameters()).device.type == device
    assert load_extractor(MODEL_FILE, device)[0] is network  # loaded once, however it is asked for
    if device == "cuda":
        assert load_extractor(device="cuda:0")[0] is network
    cpu_mask, device_mask = (sitk.GetArrayFromImage(r.mask) for r in (on_cpu, on_device))
    if device == "cpu":
        np.testing.assert_array_equal(device_mask, cpu_mask)
        assert on_device.brain_ml == on_cpu.brain_ml
    else:
        assert dice(device_mask, cpu_mask) > 0.999
        assert abs(on_device.brain_ml - on_cpu.brain_ml) < 0.001 * on_cpu.brain_ml
