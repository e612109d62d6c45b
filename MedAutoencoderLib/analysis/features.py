"""Latent features of volumes for downstream tasks (classification, clustering, retrieval).

Each code is average-pooled over its spatial axes per channel, so that every row has ``latent channels``
values whatever the grid: a slice's row is its pooled code, a volume's row is the mean of the pooled codes of its
slices (a 3D model: the pooled code of the whole model grid). The slices are those training used (foreground
covering at least ``mask_min_fraction``), so edge slices the model never saw do not dilute the mean. A VAE is
represented by its mean ``mu``.

Tables are written as CSV (``file,slice,f0,f1,...``) or as a NumPy structured array (``.npy``, loadable with
``allow_pickle=False``); ``slice`` is the axial index on the model grid, or -1 for a volume's row.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from monai.transforms import DivisiblePad

from MedAutoencoderLib.config import PreprocessConfig
from MedAutoencoderLib.detection.inference import foreground_slices
from MedAutoencoderLib.errors import ConfigurationError, TableFileError
from MedAutoencoderLib.io.loaded_model import LoadedModel
from MedAutoencoderLib.io.volumes import read_image, replacing
from MedAutoencoderLib.networks.latent import encode_slices, require_2d
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, prepare_volume
from MedAutoencoderLib.training.samples import training_slices

VOLUME_ROW = -1  # ``slice`` value of a row that describes a whole volume
FEATURE_FORMATS = ("csv", "npy")


@dataclass
class FeatureTable:
    """Rows of pooled latent codes: ``files[i]`` and ``slices[i]`` (-1: whole volume) describe ``values[i]``."""

    files: List[str]
    slices: np.ndarray  # (n,) int
    values: np.ndarray  # (n, channels) float32

    def volume_rows(self) -> "FeatureTable":
        """Only the rows that describe whole volumes."""
        keep = self.slices == VOLUME_ROW
        return FeatureTable([f for f, k in zip(self.files, keep) if k], self.slices[keep], self.values[keep])


def _pooled_code(codes: torch.Tensor) -> np.ndarray:
    """Average over every axis after the channel axis: ``(n, c, *spatial) -> (n, c)``."""
    return codes.flatten(2).mean(dim=2).numpy()


def _trained_slices(prepared: PreparedVolume, config: PreprocessConfig) -> np.ndarray:
    """The slices a 2D model trains on, or every foreground slice of a volume that has none of those."""
    chosen = training_slices(prepared.foreground, config)
    return chosen if len(chosen) else foreground_slices(prepared.foreground)


def _volume_code_3d(model: LoadedModel, prepared: PreparedVolume) -> np.ndarray:
    padded = DivisiblePad(k=model.record.model.downsampling_factor)(prepared.image[None])
    with torch.inference_mode():
        code = model.network.eval().encode(torch.as_tensor(padded)[None].float().to(model.device))["code"]
    return _pooled_code(code.float().cpu())[0]


def volume_features(model: LoadedModel, prepared: PreparedVolume, name: str, per_slice: bool) -> FeatureTable:
    """The volume's row, followed by one row per slice when ``per_slice``."""
    if model.record.model.spatial_dims == 3:
        if per_slice:
            require_2d(model, "per-slice features")
        return FeatureTable([name], np.array([VOLUME_ROW]), _volume_code_3d(model, prepared)[None])
    slices = _trained_slices(prepared, model.record.preprocess)
    pooled = _pooled_code(encode_slices(model, prepared.image[slices]))
    rows = [pooled.mean(axis=0, keepdims=True)] + ([pooled] if per_slice else [])
    indices = [np.array([VOLUME_ROW])] + ([slices] if per_slice else [])
    return FeatureTable([name] * sum(len(r) for r in rows), np.concatenate(indices),
                        np.concatenate(rows).astype(np.float32))


def extract_features(model: LoadedModel, inputs: Sequence[Union[str, Path]], per_slice: bool = False) -> FeatureTable:
    """Latent features of each input volume (see the module docstring for what a row holds)."""
    tables = []
    for path in inputs:
        prepared = prepare_volume(read_image(path), model.record.preprocess, name=str(path))
        tables.append(volume_features(model, prepared, str(path), per_slice))
    return FeatureTable([f for t in tables for f in t.files], np.concatenate([t.slices for t in tables]),
                        np.concatenate([t.values for t in tables]))


def feature_format(path: Union[str, Path], fmt: Union[str, None] = None) -> str:
    """The table format for ``path``: ``fmt``, or its suffix; a suffix naming the other format is refused (a
    CSV written under ``.npy`` could not be read back)."""
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    fmt = fmt or suffix
    if fmt not in FEATURE_FORMATS:
        raise ConfigurationError(f"{path}: feature format must be one of {', '.join(FEATURE_FORMATS)}")
    if suffix in FEATURE_FORMATS and suffix != fmt:
        raise ConfigurationError(f"{path}: the name says {suffix} but the format asked for is {fmt}; make them agree")
    return fmt


def write_features(table: FeatureTable, path: Union[str, Path], fmt: Union[str, None] = None) -> Path:
    """Write ``table`` as CSV or ``.npy`` (``fmt``; default: from the file's suffix), through a temporary name
    so that an interrupted write never leaves a truncated table under the final name."""
    path = Path(path)
    fmt = feature_format(path, fmt)
    with replacing(path) as temporary:
        if fmt == "npy":
            width = max([len(f) for f in table.files] + [1])
            dtype = [("file", f"U{width}"), ("slice", "i4"), ("features", "f4", (table.values.shape[1],))]
            rows = np.array(list(zip(table.files, table.slices, table.values)), dtype=dtype)
            with open(temporary, "wb") as handle:  # np.save would append ".npy" to any other suffix
                np.save(handle, rows, allow_pickle=False)
        else:
            with open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["file", "slice"] + [f"f{i}" for i in range(table.values.shape[1])])
                for name, index, values in zip(table.files, table.slices, table.values):
                    writer.writerow([name, int(index)] + [f"{v:.7g}" for v in values])
    return path


NPY_MAGIC = b"\x93NUMPY"


def _not_a_table(path: Path, why: str) -> TableFileError:
    return TableFileError(f"{path}: not a feature table ({why}); expected what the features command writes, a CSV "
                          "with the header file,slice,f0,... or a .npy structured array with the fields file, slice, "
                          "features")


def read_features(path: Union[str, Path]) -> FeatureTable:
    """Read a table written by :func:`write_features`. The format is taken from the bytes, not the suffix, since
    ``features --format`` may write either under any name; every value must be finite, because a classifier
    would otherwise fail deep inside scikit-learn without naming the file or the row."""
    path = Path(path)
    if not path.is_file():
        raise TableFileError(f"{path}: feature file not found")
    try:
        with open(path, "rb") as handle:
            is_npy = handle.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError as exc:
        raise TableFileError(f"{path}: feature file cannot be read ({exc.strerror or exc})") from None
    table = _read_npy_features(path) if is_npy else _read_csv_features(path)
    _require_finite(table, path, first_row=0 if is_npy else 2, row_name="row" if is_npy else "line")
    return table


def _read_npy_features(path: Path) -> FeatureTable:
    try:
        rows = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled objects (refused for safety) or a damaged header
        raise _not_a_table(path, "a .npy of Python objects" if "allow_pickle" in str(exc)
                           else "a damaged or truncated .npy") from None
    if rows.ndim != 1 or not {"file", "slice", "features"} <= set(rows.dtype.names or ()):
        raise _not_a_table(path, f"a plain {rows.dtype} array of shape {rows.shape}")
    return FeatureTable([str(f) for f in rows["file"]], rows["slice"].astype(int),
                        rows["features"].astype(np.float32).reshape(len(rows), -1))


def _read_csv_features(path: Path) -> FeatureTable:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or header[:2] != ["file", "slice"]:
                raise _not_a_table(path, "its header does not start with file,slice")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error):
        raise _not_a_table(path, "its bytes are neither text nor a .npy") from None
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise TableFileError(f"{path}, line {line}: {len(row)} columns under a header of {len(header)}")
    try:
        values = np.array([[float(v) for v in row[2:]] for row in rows], dtype=np.float32)
        slices = np.array([int(row[1]) for row in rows])
    except ValueError as exc:
        raise TableFileError(f"{path}: unreadable feature value ({exc})") from None
    return FeatureTable([row[0] for row in rows], slices, values.reshape(len(rows), len(header) - 2))


def _require_finite(table: FeatureTable, path: Path, first_row: int, row_name: str) -> None:
    """Refuse NaN or infinite features, naming the first bad row (its CSV line, or its .npy row index)."""
    bad = np.flatnonzero(~np.isfinite(table.values).all(axis=1))
    if bad.size:
        row = int(bad[0])
        raise TableFileError(f"{path}, {row_name} {row + first_row} ({table.files[row]}): feature values must be "
                             f"finite numbers, not {table.values[row][~np.isfinite(table.values[row])][0]}"
                             f"{f' ({bad.size} rows in all)' if bad.size > 1 else ''}")
