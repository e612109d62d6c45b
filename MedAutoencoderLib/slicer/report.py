"""The saved report of a detection: slices through the largest findings, the findings table, model, threshold and
date as a PNG (and a PDF), plus the summary JSON.

Pure numpy and matplotlib on the volumes' arrays (no Qt, no scene), so that it is testable anywhere. Without
matplotlib (Slicer does not bundle it) the PNG is a montage of the same slices written with SimpleITK, and the
table and facts are in the JSON beside it.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.errors import MedAutoencoderError

#: How many findings get a row of slices.
MAX_FINDINGS_SHOWN = 3
#: How many findings the table in the figure lists (all are in the JSON).
MAX_TABLE_ROWS = 15


@dataclass
class ReportData:
    """What a report shows. Arrays are (k, j, i) like ``slicer.util.arrayFromVolume``; slices are k-planes."""

    input_name: str
    image: np.ndarray
    reconstruction: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray
    spacing_ijk: Tuple[float, float, float]
    findings: Sequence[Any]  # results.Finding, largest first
    finding_slices: Sequence[int]  # k index through each finding's centroid
    summary: Dict[str, Any] = field(default_factory=dict)
    date: str = field(default_factory=lambda: datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))

    def slice_through(self, number: int) -> int:
        """The k-plane shown for the finding at position ``number`` (or the middle one when there is none)."""
        if number < len(self.finding_slices):
            return int(np.clip(self.finding_slices[number], 0, self.image.shape[0] - 1))
        return self.image.shape[0] // 2



def contrast_text(summary: Mapping[str, Any]) -> str:
    """The input's contrast as a summary states it, for a reader: "FLAIR", "T1 (contrast-enhanced)", "" if none.

    Args:
        summary: a detection summary (:func:`read_summary`).

    Returns:
        The contrast's name, "(contrast-enhanced)" when the DICOM tags said so, "(stated by the user)" when the
        user chose it, "T2, FLAIR or PD (not told apart)" for an input that may be any of them; an empty string
        for summaries without a contrast.
    """
    contrast = summary.get("contrast")
    if not isinstance(contrast, Mapping):
        return str(contrast) if contrast else ""
    candidates = [str(c) for c in contrast.get("candidates") or []]
    if not contrast.get("name") and candidates:
        return f"{', '.join(candidates[:-1])} or {candidates[-1]} (not told apart)" if len(candidates) > 1 else \
            candidates[0]
    name = str(contrast.get("name") or "")
    if name and contrast.get("enhanced"):
        name += " (contrast-enhanced)"
    if name and contrast.get("source") == "user":
        name += " (stated by the user)"
    return name


def domain_text(summary: Mapping[str, Any]) -> str:
    """What a reader must know when the input was out of the model's domain (the summary's "error_level"): "" when
    it was not.

    Args:
        summary: a detection summary (:func:`read_summary`).

    Returns:
        For example "reconstructed 2.3x worse than the model's healthy scans (another scanner?): map divided by 2.3;
        calibrate the model on this site's healthy scans".
    """
    level = summary.get("error_level")
    if not isinstance(level, Mapping) or not level.get("out_of_domain"):
        return ""
    divided = float(level.get("map_divided_by") or 1.0)
    return (f"reconstructed {divided:.1f}x worse than the model's healthy scans (another scanner?): map divided by "
            f"{divided:.1f}; calibrate the model on this site's healthy scans")


def _window(array: np.ndarray) -> Tuple[float, float]:
    low, high = np.percentile(array, (1, 99)) if array.size else (0.0, 1.0)
    return float(low), float(high if high > low else low + 1.0)


def _facts(data: ReportData) -> List[str]:
    summary = data.summary
    domain = domain_text(summary)
    threshold = summary.get("threshold")
    source = summary.get("threshold_source", "")
    return [
        f"MedAutoencoder anomaly report: {data.input_name}",
        f"Model: {summary.get('model') or 'unknown'}    Contrast: {contrast_text(summary) or '-'}    "
        f"Date: {data.date}",
        f"Threshold: {threshold:.4g} ({source or 'unknown source'})" if threshold is not None else "Threshold: -",
        f"Volume score: {summary.get('anomaly_score', float('nan')):.4g}    Flagged: "
        f"{summary.get('anomalous_volume_ml', 0.0):.2f} mL in {len(data.findings)} finding(s)",
    ] + ([f"Note: {domain}"] if domain else [])


def write_report(data: ReportData, path: str) -> List[str]:
    """Write ``<path>.png``, ``<path>.pdf`` (with matplotlib) and ``<path>.json`` (the summary, the findings and
    the report's facts); ``path`` may end in .png.

    Args:
        data: what to show.
        path: the report's file name, with or without ``.png``; its folder must exist.

    Returns:
        The paths written.

    Raises:
        MedAutoencoderError: a file could not be written (named in the message).
    """
    stem = path[:-4] if path.lower().endswith(".png") else path
    if not os.path.isdir(os.path.dirname(os.path.abspath(stem))):
        raise MedAutoencoderError(f"Cannot write the report to {stem}.png: its folder does not exist.")
    try:
        written = _figure_files(data, stem)
    except ImportError:  # no matplotlib (Slicer does not bundle it): a montage of the same slices
        written = [_montage_png(data, stem + ".png")]
    report = {"facts": _facts(data), "date": data.date, "input": data.input_name, "summary": data.summary,
              "findings": [vars(f) for f in data.findings]}
    try:
        with open(stem + ".json", "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2, default=float)
    except OSError as error:
        raise MedAutoencoderError(f"Cannot write the report's summary {stem}.json: {error.strerror}.") from None
    return written + [stem + ".json"]


def _figure_files(data: ReportData, stem: str) -> List[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, min(MAX_FINDINGS_SHOWN, len(data.findings)))
    table_rows = min(MAX_TABLE_ROWS, len(data.findings))
    height = 1.4 + 3.0 * rows + 0.3 * (table_rows + 2)
    figure = Figure(figsize=(10, height))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows + 2, 3, height_ratios=[1.4] + [3.0] * rows + [0.3 * (table_rows + 2)])
    header = figure.add_subplot(grid[0, :])
    header.axis("off")
    header.text(0, 1, "\n".join(_facts(data)), va="top", ha="left", fontsize=10, family="monospace")
    aspect = data.spacing_ijk[1] / data.spacing_ijk[0]
    image_range = _window(data.image)
    map_high = 2.0 * float(data.summary.get("threshold") or np.max(data.anomaly_map) or 1.0)
    for row in range(rows):
        k = data.slice_through(row)
        title = (f"Finding {data.findings[row].number}: {data.findings[row].volume_ml:.2f} mL, slice k={k}"
                 if row < len(data.findings) else f"No finding; slice k={k}")
        panels = (("Input", data.image[k], None), ("Reconstruction", data.reconstruction[k], None),
                  ("Input + anomaly", data.image[k], data.anomaly_map[k]))
        for column, (name, plane, overlay) in enumerate(panels):
            axes = figure.add_subplot(grid[1 + row, column])
            axes.imshow(plane, cmap="gray", vmin=image_range[0], vmax=image_range[1], aspect=aspect,
                        interpolation="nearest")
            if overlay is not None:
                shown = np.ma.masked_less(overlay, 0.25 * map_high)
                axes.imshow(shown, cmap="hot", vmin=0.0, vmax=map_high, alpha=0.6, aspect=aspect,
                            interpolation="nearest")
                if np.any(data.mask[k]):
                    axes.contour(data.mask[k] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            axes.set_title(name if column else f"{title}\n{name}", fontsize=9, loc="left")
            axes.axis("off")
    table_axes = figure.add_subplot(grid[rows + 1, :])
    table_axes.axis("off")
    if table_rows:
        cells = [[str(f.number), f"{f.volume_ml:.3f}", f"{f.peak_anomaly:.4g}", f"{f.mean_anomaly:.4g}",
                  "{:.1f}, {:.1f}, {:.1f}".format(*f.centroid_ras_mm), f.region or "-"]
                 for f in data.findings[:table_rows]]
        table = table_axes.table(cellText=cells, colLabels=["#", "Volume (mL)", "Peak", "Mean", "Centroid RAS (mm)",
                                                            "Region"], loc="upper center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    else:
        table_axes.text(0.5, 0.5, "No findings above the threshold.", ha="center", va="center")
    figure.tight_layout()
    written = []
    for suffix in (".png", ".pdf"):
        try:
            figure.savefig(stem + suffix, dpi=110)
        except OSError as error:
            raise MedAutoencoderError(f"Cannot write the report {stem}{suffix}: {error.strerror}.") from None
        written.append(stem + suffix)
    return written


def _montage_png(data: ReportData, path: str) -> str:
    """Input, reconstruction and overlay (map in red, mask outline in cyan) of each shown finding, as RGB PNG."""
    low, high = _window(data.image)

    def grey(plane: np.ndarray) -> np.ndarray:
        scaled = np.clip((plane - low) / (high - low), 0, 1)
        return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)

    rows = []
    map_high = 2.0 * float(data.summary.get("threshold") or np.max(data.anomaly_map) or 1.0)
    for row in range(max(1, min(MAX_FINDINGS_SHOWN, len(data.findings)))):
        k = data.slice_through(row)
        overlay = grey(data.image[k]).astype(np.float32)
        strength = np.clip(data.anomaly_map[k] / map_high, 0, 1)[..., None] * 0.6
        overlay = overlay * (1 - strength) + np.array([255.0, 40.0, 0.0]) * strength
        mask = data.mask[k] > 0
        edge = mask & ~_eroded(mask)
        overlay[edge] = (0, 255, 255)
        rows.append(np.concatenate([grey(data.image[k]), grey(data.reconstruction[k]),
                                    overlay.astype(np.uint8)], axis=1))
    picture = sitk.GetImageFromArray(np.concatenate(rows, axis=0), isVector=True)
    try:
        sitk.WriteImage(picture, path)
    except RuntimeError:
        raise MedAutoencoderError(f"Cannot write the report {path}.") from None
    return path


def _eroded(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def default_report_path(folder: str, input_name: str, when: Optional[datetime.datetime] = None) -> str:
    """``<folder>/<input>_anomaly_report_<date>.png`` with characters unfit for file names replaced."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in input_name) or "volume"
    stamp = (when or datetime.datetime.now()).strftime("%Y%m%d_%H%M%S")
    return os.path.join(folder, f"{safe}_anomaly_report_{stamp}.png")
