"""Which MRI contrast a brain scan is (T1, T2, FLAIR, PD), from its DICOM tags or its tissue ordering.

A model made for one contrast gives confident nonsense on another (a FLAIR through a T1 model flags a tenth of
the normal brain), so detection checks the input's contrast first. DICOM tags decide where they name the
sequence (series description, protocol and sequence names, scanning sequence, TR/TE/TI); otherwise the order of
the tissues' brightness inside the brain decides:

    T1: white matter > grey matter > CSF        T2: CSF > grey matter > white matter
    FLAIR: grey matter > white matter, CSF dark  PD: grey matter a little above white matter, CSF about as grey matter

each with a margin, so that a scan matching no ordering clearly is reported as unknown rather than guessed. With
the learned extractor's tissue classes, dark ventricles (its sure CSF voxels) make a scan whose grey matter is
brighter than its white matter a FLAIR, whatever bright lesions do to the brain's intensity tail.

With a tissue map (the learned brain extractor's classes, where it is sure of them) grey and white matter are the
medians of their voxels, and the CSF is the brain's intensity tail, dark or bright, that departs more from them.
Without a tissue map the tissues are estimated from the brain mask alone (written here: no library estimates
tissue levels of an unknown contrast from a mask). The mask's outer 8 mm hold cortex and sulcal CSF: a
two-Gaussian mixture of their intensities gives a grey-matter and a CSF level, the one nearer the deep white
matter's histogram mode being the grey matter. Without the CSF-like voxels, the parenchyma's layer next to CSF
is the cortex (its mode: the grey matter) and the parenchyma away from any CSF the white matter (its mode); the
CSF is the CSF-like voxels' quartile away from the tissue. Modes and quartiles, not means, so that lesions and
partial volume move them little.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.io.volumes import DICOM_SERIES_TAGS
from MedAutoencoderLib.preprocessing.morphology import bounding_box
from MedAutoencoderLib.preprocessing.quantiles import percentile

CONTRASTS = ("T1", "T2", "FLAIR", "PD")

DICOM_CONTRAST_TAGS = DICOM_SERIES_TAGS  # group|element as SimpleITK/GDCM name them: what they are

# Tissue bands of the mask-only estimate, in millimetres from the mask's edge. The outer ribbon holds the
# cortex (about two thirds, the rest sulcal CSF, on IXI brains of the DLMUSE parcellation); from 12 to 30 mm
# white matter dominates; below 30 mm lie the ventricles.
_RIBBON_MM = (0.0, 8.0)
_DEEP_MM = (12.0, 30.0)
_CORE_MM = 30.0
# The cortex: parenchyma within this distance of CSF (its thickness, 2.5-3 mm), in the outer part of the brain.
_CORTEX_MM = 3.0
_CORTEX_DEPTH_MM = 20.0
_WHITE_FROM_CSF_MM = 5.0
# CSF departs from the parenchyma by more than this share of the parenchyma's level above the background.
_CSF_DEPARTURE = 0.25


@dataclass
class ContrastEstimate:
    """What contrast a scan is, and why.

    ``name`` is one of :data:`CONTRASTS`, or None when it cannot be told; ``candidates`` then holds the contrasts
    the tissues leave (grey matter brighter than white matter: T2, FLAIR or PD, never T1), if any; ``enhanced``
    says a T1 was taken with a contrast agent (known from DICOM tags only); ``source`` is "dicom", "tissue
    ordering" or "user"; ``evidence`` holds the tags or the tissue levels and ratios used; ``reason`` says it in
    one line."""

    name: Optional[str]
    source: str
    reason: str
    enhanced: bool = False
    evidence: Dict[str, Any] = field(default_factory=dict)
    candidates: List[str] = field(default_factory=list)

    def describe(self) -> str:
        """'FLAIR (grey matter brighter than white matter, CSF dark)', 'one of T2, FLAIR, PD (...)' or 'an unknown
        contrast (...)'."""
        if self.name:
            what = f"contrast-enhanced {self.name}" if self.enhanced else self.name
        else:
            what = f"one of {', '.join(self.candidates)}" if self.candidates else "an unknown contrast"
        return f"{what} ({self.reason})"

    def summary(self) -> Dict[str, Any]:
        """The part a detection's summary JSON carries."""
        return {"name": self.name, "enhanced": self.enhanced, "source": self.source, "reason": self.reason,
                **({"candidates": list(self.candidates)} if self.candidates else {})}

    def to_plain(self) -> Dict[str, Any]:
        return asdict(self)


def user_contrast(name: str) -> ContrastEstimate:
    """The contrast a user stated (``--contrast``); ``name`` is checked against :data:`CONTRASTS`."""
    upper = name.strip().upper()
    if upper not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, not {name!r}")
    return ContrastEstimate(name=upper, source="user", reason="stated by the user")


def identify_contrast(image: Union[sitk.Image, np.ndarray], brain: Union[sitk.Image, np.ndarray],
                      tissues: Union[sitk.Image, np.ndarray, None] = None,
                      tags: Optional[Mapping[str, str]] = None,
                      spacing: Optional[Tuple[float, float, float]] = None) -> ContrastEstimate:
    """The contrast of a brain scan: from its DICOM tags where they tell, else from its tissue ordering.

    Args:
        image: the scan (a SimpleITK image, or a (z, y, x) array with ``spacing``).
        brain: the brain mask on the image's grid (non-zero inside).
        tissues: optional tissue map on the same grid (0 background or unsure, 1 CSF, 2 grey matter, 3 white
            matter); without it the tissues are estimated from the brain mask (see the module's description).
        tags: DICOM tags as :data:`DICOM_CONTRAST_TAGS` names them; None: those in ``image``'s metadata (the
            reader copies them from a series' first slice).
        spacing: voxel spacing (x, y, z) in mm when ``image`` is an array (default 1 mm).

    Returns:
        A :class:`ContrastEstimate`; its ``name`` is None when neither the tags nor the tissues tell.
    """
    if tags is None and isinstance(image, sitk.Image):
        tags = dicom_tags_of(image)
    from_tags = contrast_from_tags(tags or {})
    if from_tags is not None:
        return from_tags
    if isinstance(image, sitk.Image):
        spacing = image.GetSpacing()
        values = sitk.GetArrayViewFromImage(image)
    else:
        values = np.asarray(image)
    mask = _array(brain).astype(bool)
    if mask.shape != values.shape:
        raise ValueError(f"brain mask shape {mask.shape} differs from the image's {values.shape}")
    spacing_zyx = tuple(float(s) for s in reversed(spacing)) if spacing is not None else (1.0, 1.0, 1.0)
    levels = tissue_levels(values, mask, spacing_zyx, None if tissues is None else _array(tissues))
    return contrast_from_levels(levels)


def extraction_levels(extraction: Any) -> Dict[str, Any]:
    """The tissue levels (:func:`tissue_levels`) of a learned brain extraction (a
    :class:`~MedAutoencoderLib.brain.extractor.BrainExtraction`): its scan, brain and sure tissue classes on its own
    grid. Small enough to keep with a prepared volume, which the extraction's images are not."""
    scan = extraction.scan
    spacing_zyx = tuple(float(s) for s in reversed(scan.GetSpacing()))
    return tissue_levels(sitk.GetArrayViewFromImage(scan), sitk.GetArrayViewFromImage(extraction.tissue) > 0,
                         spacing_zyx, sitk.GetArrayViewFromImage(extraction.sure_tissue))


def _array(image: Union[sitk.Image, np.ndarray]) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)


# ----------------------------------------------------------------------------------------------------------
# DICOM tags


def dicom_tags_of(image: sitk.Image) -> Dict[str, str]:
    """The tags of :data:`DICOM_CONTRAST_TAGS` present in ``image``'s metadata (empty for non-DICOM files)."""
    return {key: image.GetMetaData(key).strip() for key in DICOM_CONTRAST_TAGS
            if image.HasMetaDataKey(key) and image.GetMetaData(key).strip()}


# Words in the series description, protocol or sequence name; matched as whole tokens of the lower-cased text.
_OTHER_KINDS = (  # series that are none of the four: refused, not guessed from their intensities
    (r"dwi|diff\w*|dti|adc|trace|ep2d_diff|b\d{3,4}", "diffusion"),
    (r"swi|swan|t2\*|t2star|t2_star|hemo|susc\w*", "susceptibility (T2*)"),
    (r"bold|fmri|resting|rest|perf\w*|asl|pasl|pcasl|dsc|dce", "functional or perfusion"),
    (r"tof|mra|angio|pc_?mra|venogra\w*", "angiography"),
    (r"stir", "STIR (fat-suppressed inversion recovery)"),
    (r"localizer|localiser|scout|survey|aahead|calibration", "localizer"),
)
_FLAIR = r"flair|tirm|dark[ _-]?fluid|da[ _-]?fl|fl[ _-]?da|spc[ _-]?fl"
_T1 = r"t1\w*|mprage|mp[ _-]?rage|mp2rage|spgr|fspgr|bravo|tfl\w*|tfe|t1tfe|vibe|fl3d\w*|mpr"
_T2 = r"t2|t2w|t2_?tse|t2_?fse|t2_?space|spc_?t2|t2\w*"
_PD = r"pd|pdw|pd_?tse|pd_?fse|proton[ _-]?density"
_ENHANCED = r"post|gd|gad\w*|contrast|ce|c\+|\+c|kon|km|enh\w*"


def _has(pattern: str, text: str) -> bool:
    return re.search(rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])", text) is not None


def _number(tags: Mapping[str, str], key: str) -> Optional[float]:
    try:
        value = float(str(tags.get(key, "")).split("\\")[0])
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


def contrast_from_tags(tags: Mapping[str, str]) -> Optional[ContrastEstimate]:
    """The contrast the DICOM ``tags`` state, or None when they say nothing usable (then the intensities decide).

    Names first (series description, protocol name, sequence name), then the timings (TR/TE/TI): a series whose
    name says it is none of the four (diffusion, T2*, angiography...) gives an estimate with ``name`` None.
    """
    names = " ".join(str(tags.get(key, "")) for key in ("0008|103e", "0018|1030", "0018|0024")).lower()
    names = names.replace("-", "_")
    tr, te, ti = (_number(tags, key) for key in ("0018|0080", "0018|0081", "0018|0082"))
    scanning = str(tags.get("0018|0020", "")).upper()
    agent = str(tags.get("0018|0010", "")).strip()
    evidence = {DICOM_CONTRAST_TAGS[k]: v for k, v in tags.items() if k in DICOM_CONTRAST_TAGS and str(v).strip()}
    if not evidence:
        return None
    enhanced = bool(agent) and agent.lower() not in ("none", "no", "0", "n/a") or _has(_ENHANCED, names)
    said = next((kind for pattern, kind in _OTHER_KINDS if _has(pattern, names)), None)
    name, how = _named_contrast(names, ti)
    if said is not None and name is None:
        return ContrastEstimate(None, "dicom", f"its DICOM names say {said} ({_quoted(tags)}), none of "
                                f"{', '.join(CONTRASTS)}", evidence=evidence)
    if name is None:
        name, how = _timed_contrast(tr, te, ti, scanning)
        if name is None and "EP" in scanning.split("\\"):
            return ContrastEstimate(None, "dicom", "an echo-planar series (diffusion or functional, by its scanning "
                                    "sequence EP) without a name that says otherwise", evidence=evidence)
    if name is None:
        return None
    return ContrastEstimate(name, "dicom", how, enhanced=enhanced and name == "T1", evidence=evidence)


def _quoted(tags: Mapping[str, str]) -> str:
    return ", ".join(f"{DICOM_CONTRAST_TAGS[k]} '{tags[k]}'" for k in ("0008|103e", "0018|1030", "0018|0024")
                     if str(tags.get(k, "")).strip())


def _named_contrast(names: str, ti: Optional[float]) -> Tuple[Optional[str], str]:
    """The contrast the series' names state, or (None, '')."""
    flair, t1, t2, pd = (_has(p, names) for p in (_FLAIR, _T1, _T2, _PD))
    if flair and t1 and not t2:  # T1-FLAIR (an inversion-prepared T1, TI about 800 ms)
        return "T1", "its DICOM names say T1-FLAIR, a T1-weighted inversion recovery"
    if flair:
        return "FLAIR", "its DICOM names say FLAIR"
    if pd and not t2:
        return "PD", "its DICOM names say proton density"
    if t2 and not t1 and not pd:
        return "T2", "its DICOM names say T2"
    if t1 and not t2 and not pd:
        return "T1", "its DICOM names say T1"
    return None, ""


def _timed_contrast(tr: Optional[float], te: Optional[float], ti: Optional[float],
                    scanning: str) -> Tuple[Optional[str], str]:
    """The contrast of the usual TR/TE/TI ranges (ms), or (None, '') outside them."""
    if ti is not None and tr is not None and ti >= 1500 and tr >= 4000:
        return "FLAIR", f"its DICOM timings are a FLAIR's (TI {ti:g} ms, TR {tr:g} ms)"
    if ti is not None and 300 <= ti <= 1300:
        return "T1", f"its DICOM timings are an inversion-prepared T1's (TI {ti:g} ms)"
    if ti is not None:
        return None, ""
    if tr is None or te is None:
        return None, ""
    if tr < 1000 and te < 30:
        return "T1", f"its DICOM timings are a T1's (TR {tr:g} ms, TE {te:g} ms)"
    if tr >= 2000 and te >= 60:
        return "T2", f"its DICOM timings are a T2's (TR {tr:g} ms, TE {te:g} ms)"
    if tr >= 2000 and te <= 30 and "EP" not in scanning.split("\\"):
        return "PD", f"its DICOM timings are a proton density's (TR {tr:g} ms, TE {te:g} ms)"
    return None, ""


# ----------------------------------------------------------------------------------------------------------
# Tissue ordering


def tissue_levels(values: np.ndarray, brain: np.ndarray, spacing_zyx: Tuple[float, float, float],
                  tissues: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Typical intensity of white matter, grey matter and CSF inside ``brain``, and the background level.

    With ``tissues`` (1 CSF, 2 grey matter, 3 white matter) the medians of grey and white matter and the CSF's
    intensity tail; else the mask-only estimate of the module's description. ``csf`` is None where CSF does not
    depart clearly from the parenchyma ("flat").
    """
    values = np.asarray(values, dtype=np.float32)
    outside = values[~brain]
    background = percentile(outside, 1.0) if outside.size else percentile(values, 1.0)
    if not brain.any():
        raise ValueError("the brain mask is empty")
    if tissues is not None:
        return _levels_of_tissue_map(values, brain, tissues, background, float(np.prod(spacing_zyx)) / 1000.0)
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_zyx)
    deepest = float(depth.max())
    inside = values[brain]
    low, high = np.percentile(inside, (0.5, 99.5))
    white = _mode(values[brain & _band(depth, _DEEP_MM, deepest)], low, high)
    ribbon = values[brain & _band(depth, _RIBBON_MM, deepest)]
    means, weights = _two_gaussians(ribbon[:: max(1, ribbon.size // 200000)])
    near = int(np.argmin(np.abs(means - white)))  # grey matter lies nearer white matter than CSF does
    # CSF-like voxels (nearer the CSF's mean than the grey matter's) removed, the outer layer of what remains
    # is the cortex: its mode is the grey matter, which sulcal CSF cannot pull, whatever the mask's margin
    csf_like = np.abs(values - means[1 - near]) < np.abs(values - means[near])
    parenchyma = brain & ~csf_like
    from_csf = ndimage.distance_transform_edt(parenchyma, sampling=spacing_zyx)
    cortex = parenchyma & (from_csf <= _CORTEX_MM) & _band(depth, (0.0, _CORTEX_DEPTH_MM), deepest)
    grey = _mode(values[cortex], low, high)
    # the white matter again, now as the parenchyma away from any CSF (whatever the mask's margin of CSF)
    interior = parenchyma & (from_csf > _WHITE_FROM_CSF_MM)
    if interior.sum() > 1000:
        white = _mode(values[interior], low, high)
    # the CSF-like voxels' quartile away from the grey matter: many share their voxel with tissue (partial
    # volume), which pulls their median towards the grey matter
    ribbon_csf = ribbon[csf_like[brain & _band(depth, _RIBBON_MM, deepest)]]
    csf = float(np.percentile(ribbon_csf, 25.0 if means[1 - near] < means[near] else 75.0)) \
        if ribbon_csf.size else float(means[1 - near])
    lower = background + (min(grey, white) - background) * (1.0 - _CSF_DEPARTURE)
    upper = background + (max(grey, white) - background) * (1.0 + _CSF_DEPARTURE)
    core = values[brain & (depth >= min(_CORE_MM, 0.6 * deepest))]
    return {"background": background, "method": "brain mask depth", "wm": white, "gm": grey, "csf": csf,
            "csf_share_of_ribbon": round(float(weights[1 - near]), 3),
            "core_dark_share": round(float((core < lower).mean()), 4) if core.size else 0.0,
            "core_bright_share": round(float((core > upper).mean()), 4) if core.size else 0.0,
            "deepest_mm": round(deepest, 1)}


# The CSF level of a tissue map: the brain's intensity percentile this far into the tail (dark or bright) that
# departs more from the grey and white matter. A segmentation's CSF class is not reliable across contrasts (the
# learned extractor, trained mostly on T1-like orderings, labels a T2's bright CSF as grey matter), while CSF, about
# a tenth of the brain (ventricles and sulci), always makes one tail of its intensities. Chosen on synthetic
# T1/T2/PD/FLAIR volumes of the IXI validation maps (the 2nd, 3rd and 5th percentiles compared).
_CSF_TAIL_PERCENT = 3.0
# ... inside the brain less its outer voxels (two of the extractor's 2 mm voxels), where a skull-stripped scan's zeros
# and the scalp mix in
_CSF_TAIL_EROSION = 2


def _levels_of_tissue_map(values: np.ndarray, brain: np.ndarray, tissues: np.ndarray,
                          background: float, voxel_ml: float) -> Dict[str, Any]:
    """Grey and white matter: the medians of their voxels in ``tissues``; CSF: the brain's intensity tail that
    departs more from them (:data:`_CSF_TAIL_PERCENT`). The CSF class's median is kept as evidence, and that of its
    voxels with signal (above the background: not a skull-stripped scan's zeros) with their volume, which tell a
    FLAIR's dark ventricles (:data:`_FLAIR_MAX_CSF_CLASS_WHITE`)."""
    medians = {label: values[brain & (tissues == code)] for label, code in (("csf_class", 1), ("gm", 2), ("wm", 3))}
    levels: Dict[str, Any] = {"background": background, "method": "tissue map",
                              **{k: float(np.median(v)) if v.size else None for k, v in medians.items()}}
    with_signal = medians["csf_class"][medians["csf_class"] > background]
    levels.update(csf_class_signal=float(np.median(with_signal)) if with_signal.size else None,
                  csf_class_signal_ml=round(float(with_signal.size) * voxel_ml, 2))
    gm, wm = levels["gm"], levels["wm"]
    levels["csf"] = None
    if gm is not None and wm is not None:
        inner = np.zeros_like(brain)
        box = bounding_box(brain, 1)  # eroded within the brain's box: beyond it nothing is left
        inner[box] = ndimage.binary_erosion(brain[box], iterations=_CSF_TAIL_EROSION)
        inside = values[inner] if inner.sum() > 1000 else values[brain]
        dark, bright = np.percentile(inside, (_CSF_TAIL_PERCENT, 100.0 - _CSF_TAIL_PERCENT))
        low, high = min(gm, wm), max(gm, wm)
        below = (low - dark) / max(low - background, 1e-12)
        above = (bright - high) / max(high - background, 1e-12)
        levels.update(csf=float(dark if below >= above else bright), csf_tail="dark" if below >= above else "bright")
    return levels


def _two_gaussians(values: np.ndarray, iterations: int = 50) -> Tuple[np.ndarray, np.ndarray]:
    """Means and weights of a two-Gaussian mixture fitted to ``values`` by expectation maximisation (started at
    the 15th and 85th percentiles): the ribbon's grey matter and CSF."""
    x = values.astype(np.float64)
    means = np.percentile(x, (15.0, 85.0))
    spread = max(float(np.std(x)), 1e-6)
    sigmas = np.array([spread / 2, spread / 2])
    weights = np.array([0.5, 0.5])
    for _ in range(iterations):
        density = weights / sigmas * np.exp(-0.5 * ((x[:, None] - means) / sigmas) ** 2)
        resp = density / np.maximum(density.sum(axis=1, keepdims=True), 1e-300)
        weights = np.maximum(resp.mean(axis=0), 1e-6)
        means = (resp * x[:, None]).sum(axis=0) / np.maximum(resp.sum(axis=0), 1e-9)
        sigmas = np.sqrt((resp * (x[:, None] - means) ** 2).sum(axis=0) / np.maximum(resp.sum(axis=0), 1e-9))
        sigmas = np.maximum(sigmas, spread * 0.02)
    return means, weights


def _band(depth: np.ndarray, band_mm: Tuple[float, float], deepest: float) -> np.ndarray:
    """Voxels ``band_mm`` from the mask's edge, the band shrunk with a brain (or crop) smaller than an adult's."""
    scale = min(1.0, deepest / 50.0)
    return (depth > band_mm[0] * scale) & (depth <= max(band_mm[1] * scale, band_mm[0] * scale + 1.0))


def _mode(values: np.ndarray, low: float, high: float, bins: int = 128) -> float:
    """The histogram mode of ``values`` in [low, high] (smoothed histogram): the most common intensity, which a
    homogeneous tissue sets and a minority of lesions or partial-volume voxels does not move."""
    if values.size == 0:
        return float("nan")
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    smooth = ndimage.gaussian_filter1d(counts.astype(float), 2.0)
    peak = int(np.argmax(smooth))
    return float((edges[peak] + edges[peak + 1]) / 2)


# Margins of the orderings, as ratios above the background. Grey over white matter: T1 at most 0.95 (real T1:
# about 0.6-0.85), the others at least 1.03 (FLAIR about 1.1-1.3, PD 1.05-1.2, T2 1.2-1.6). CSF over grey matter:
# T2 at least 1.5 (about 2-4), PD 0.7-1.4, FLAIR's CSF under 0.6 of white matter (about 0.1-0.4). A PD's grey matter
# is at most 1.25 times its white matter (T2's more).
_T1_MAX_GREY_WHITE = 0.88
# ... with a tissue map: partial volume at 2 mm pulls the classes' medians together (real IXI T1 heads drawn through the
# synthesis engine: up to 0.89; the T2/PD/FLAIR draws 0.97 and above where their ordering held)
_T1_MAX_GREY_WHITE_OF_MAP = 0.95
_MIN_GREY_WHITE = 1.03
_T2_MIN_CSF_GREY = 1.5
_PD_CSF_GREY = (0.7, 1.4)
_PD_MAX_GREY_WHITE = 1.25
_FLAIR_MAX_CSF_WHITE = 0.6
# ... and with a tissue map, a FLAIR's ventricles: the extractor's sure CSF voxels with signal (at least 0.8 mL of
# them) under 0.6 of white matter, whatever the brain's bright tail (a FLAIR's lesions, brighter than its grey
# matter, outweigh its dark CSF there). On engine images of the 16 IXI validation maps in each contrast, healthy and
# with a 30-200 mL lesion (scripts/choose_contrast_rule.py): FLAIR 20 -> 28 of 32 named, T1 and T2 unchanged (the
# T2s' ventricles 0.64 of white matter and above), PD read as FLAIR 2 -> 3 of 31 (the same bundled model, its
# threshold 0.02 higher). 0.8 mL: of 0, 0.4, 0.8 and 2 mL the largest that keeps those 28 (PD as FLAIR 5, 4, 3, 2)
_FLAIR_MAX_CSF_CLASS_WHITE = 0.6
_MIN_CSF_CLASS_ML = 0.8
_T1_MAX_CSF_GREY = 0.8
# What grey matter brighter than white matter (by _MIN_GREY_WHITE) leaves when the CSF does not tell: never a T1 (on
# the engine images of scripts/choose_contrast_rule.py T1s reach GM/WM 0.97 at most; 8 T2 and 7 PD of the 25 left
# unknown are such scans)
_NOT_T1 = ("T2", "FLAIR", "PD")


def contrast_from_levels(levels: Mapping[str, Any]) -> ContrastEstimate:
    """The contrast whose tissue ordering ``levels`` (:func:`tissue_levels`) match with a margin, else None."""
    b = float(levels["background"])
    wm, gm, csf = levels.get("wm"), levels.get("gm"), levels.get("csf")
    evidence = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in levels.items()}
    if wm is None or gm is None or not np.isfinite(wm) or not np.isfinite(gm) or wm - b <= 0 or gm - b <= 0:
        return ContrastEstimate(None, "tissue ordering", "grey and white matter could not be measured inside the "
                                "brain mask", evidence=evidence)
    grey_white = (gm - b) / (wm - b)
    csf_grey = (csf - b) / (gm - b) if csf is not None else None
    csf_white = (csf - b) / (wm - b) if csf is not None else None
    evidence.update(gm_over_wm=round(grey_white, 3),
                    csf_over_gm=None if csf_grey is None else round(csf_grey, 3),
                    csf_over_wm=None if csf_white is None else round(csf_white, 3))
    ratios = f"GM/WM {grey_white:.2f}" + ("" if csf_grey is None else f", CSF/GM {csf_grey:.2f}")

    def found(name: Optional[str], reason: str, candidates: Sequence[str] = ()) -> ContrastEstimate:
        return ContrastEstimate(name, "tissue ordering", f"{reason}; {ratios}", evidence=evidence,
                                candidates=list(candidates))

    t1_max = _T1_MAX_GREY_WHITE_OF_MAP if levels.get("method") == "tissue map" else _T1_MAX_GREY_WHITE
    if grey_white <= t1_max:
        if csf_grey is not None and csf_grey <= _T1_MAX_CSF_GREY:
            return found("T1", "white matter brighter than grey matter, CSF dark")
        return found(None, "white matter brighter than grey matter as in a T1, but CSF not darker than grey "
                     "matter")
    if grey_white < _MIN_GREY_WHITE:
        return found(None, "grey and white matter about equally bright")
    ventricles = levels.get("csf_class_signal")
    if ventricles is not None and levels.get("csf_class_signal_ml", 0.0) >= _MIN_CSF_CLASS_ML:
        ventricles_white = (ventricles - b) / (wm - b)
        evidence.update(csf_class_over_wm=round(float(ventricles_white), 3))
        if ventricles_white <= _FLAIR_MAX_CSF_CLASS_WHITE:
            return found("FLAIR", "grey matter brighter than white matter, the ventricles dark")
    if csf_grey is None:
        return found(None, "grey matter brighter than white matter, but no CSF found to tell the contrast by",
                     _NOT_T1)
    if csf_grey >= _T2_MIN_CSF_GREY:
        return found("T2", "CSF brightest, grey matter brighter than white matter")
    if csf_white <= _FLAIR_MAX_CSF_WHITE:
        return found("FLAIR", "grey matter brighter than white matter, CSF dark")
    if _PD_CSF_GREY[0] <= csf_grey <= _PD_CSF_GREY[1] and grey_white <= _PD_MAX_GREY_WHITE:
        return found("PD", "grey matter brighter than white matter, CSF about as bright as grey matter")
    return found(None, "grey matter brighter than white matter, but CSF neither dark as in a FLAIR nor bright "
                 "as in a T2", _NOT_T1)


# ----------------------------------------------------------------------------------------------------------
# Models and the contrasts they are made for


def model_contrasts(contrasts: Optional[Sequence[str]], foreground: str) -> Tuple[Optional[List[str]], str]:
    """The contrasts a model is made for, and a note where its file does not record them.

    Args:
        contrasts: what the model file records (None: an older file without the record).
        foreground: the model's foreground method; a brain-template model without a record is one of the
            bundled kind, made from T1 images.

    Returns:
        The contrasts (None: unknown, not checked) and a note for the summary ('' where recorded)."""
    if contrasts is not None:
        return [str(c) for c in contrasts], ""
    if foreground in ("brain", "template"):  # a template model loads with the learned extractor ("brain")
        return ["T1"], "the model file does not record its contrasts; a brain-template model without that " \
                       "record is of the bundled kind, made for T1"
    return None, "the model file does not record which contrasts it is made for: the input's contrast was not " \
                 "checked"


def require_model_contrast(estimate: ContrastEstimate, contrasts: Sequence[str], name: str,
                           model_name: str) -> None:
    """Refuse a scan whose contrast is unknown or not one ``contrasts`` holds, in one line naming the scan.

    Raises:
        InputImageError: saying what was found, why, and how to run the model anyway (``--contrast``); its
            ``contrast`` attribute holds the contrast found (None: not told), ``found`` what was found, in words."""
    if estimate.name is not None and estimate.name in contrasts:
        return
    if estimate.name is None and estimate.candidates and set(estimate.candidates) <= set(contrasts):
        return  # the model is made for each contrast it may be
    made_for = " or ".join(contrasts)
    how = f"pass --contrast {contrasts[0]} to run it anyway" if estimate.source != "user" else \
        "no model for it here"
    if estimate.name is None and estimate.candidates:
        found = f"its contrast cannot be told beyond one of {', '.join(estimate.candidates)} ({estimate.reason})"
    elif estimate.name is None:
        found = f"its contrast cannot be told ({estimate.reason})"
    elif estimate.source == "user":
        found = f"given as {estimate.name} (--contrast)"
    else:
        found = f"looks like {estimate.describe()}"
    refusal = InputImageError(f"{name}: {found}; the model {model_name} is made for {made_for}: {how}")
    refusal.contrast = estimate.name  # the bundled set runs the input through its model of that contrast
    refusal.candidates = list(estimate.candidates)  # ... or of all of these, when one model is made for each
    refusal.found = found  # or says what was found in its own refusal
    raise refusal
