"""Reading, checking and writing volumes with SimpleITK.

Accepts NIfTI, NRRD, MHA/MHD and DICOM series folders. Only 3D scalar volumes are accepted, and every problem
is reported as an :class:`InputImageError` that names the file, instead of failing later inside torch.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from isal import igzip, isal_zlib

from MedAutoencoderLib.errors import (
    OUT_OF_MEMORY_ADVICE,
    InputImageError,
    OutOfMemoryError,
    OutputExistsError,
    OutputLocationError,
    is_out_of_memory,
    itk_reason,
)
from MedAutoencoderLib.runtime.threads import WaitingThreadPool

PathLike = Union[str, "os.PathLike[str]"]

_NON_FINITE = "contains NaN or infinite values; fix or mask them before use"
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
#: The volumes a detection writes for an input ``<stem>``: ``<stem>_<kind>``, beside ``<stem>_summary.json``.
OUTPUT_KINDS = ("reconstruction", "anomaly_map", "anomaly_mask")
SUMMARY_SUFFIX = "_summary.json"


def volume_suffix(path: PathLike) -> str:
    """The volume extension of ``path`` ('.nii.gz' counts as one), or '' for anything else."""
    name = os.fspath(path).lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), "")


def volume_stem(path: PathLike) -> str:
    """File name without its volume extension (a DICOM folder keeps its folder name, also when given as ``.``)."""
    p = Path(os.path.abspath(path))
    suffix = volume_suffix(p)
    return p.name[: len(p.name) - len(suffix)] if suffix else p.name


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        volumes = [p for p in folder.iterdir() if p.is_file() and volume_suffix(p)]
        if volumes:  # where one volume is asked for (interpolate's two), a folder of them is no DICOM series
            raise InputImageError(f"{folder}: is a folder of {len(volumes)} volume file(s), not one volume; give "
                                  f"one of its files (e.g. {volumes[0]})")
        raise InputImageError(f"{folder}: folder holds no volume files and no DICOM series")
    if len(series) > 1:
        raise InputImageError(
            f"{folder}: folder holds {len(series)} DICOM series; point to a folder with a single series"
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's position, for the check below
    image = reader.Execute()
    _require_even_slices(reader, image, folder)
    for key in DICOM_SERIES_TAGS:  # the series' own description, as a single DICOM file's image carries it
        if reader.HasMetaDataKey(0, key):
            image.SetMetaData(key, reader.GetMetaData(0, key))
    return image


#: DICOM tags of a series' first slice that its volume carries in its metadata (what the sequence was, for the
#: contrast check of :mod:`MedAutoencoderLib.brain.contrast`), and what they are.
DICOM_SERIES_TAGS = {
    "0008|103e": "series description",
    "0018|1030": "protocol name",
    "0018|0024": "sequence name",
    "0018|0020": "scanning sequence",
    "0018|0080": "repetition time",
    "0018|0081": "echo time",
    "0018|0082": "inversion time",
    "0018|0010": "contrast agent",
}


# Of the median distance between neighbouring slices: a missing slice makes one gap twice that (or a repeated
# position one of 0), while positions stored rounded (0.6 and 0.7 mm for 0.625 mm slices) stay well within it.
_SLICE_GAP_TOLERANCE = 0.5


def _require_even_slices(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along the slice normal (a missing slice, mostly): ITK
    stacks them at one spacing anyway, with a mere warning, and every slice after the gap lands misplaced (by
    5.7 mm in a 6 mm series missing one slice), and with it every output."""
    if image.GetDimension() != 3 or len(reader.GetFileNames()) != image.GetSize()[2]:
        return  # a multi-frame file (its frames' positions are not per file): nothing to compare here
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                              for i in range(image.GetSize()[2])]) @ normal
    except (RuntimeError, ValueError):  # a slice without a usable position: nothing to compare
        return
    gaps = np.abs(np.diff(positions))
    if gaps.size < 2:
        return
    typical = float(np.median(gaps))
    if typical > 0 and np.abs(gaps - typical).max() <= _SLICE_GAP_TOLERANCE * typical:
        return
    if typical == 0:
        raise InputImageError(f"{folder}: most of its slices share one position: several images per position (echoes, "
                              "time points) cannot be stacked into one volume; put one volume's slices in the folder")
    raise InputImageError(f"{folder}: its slices are not evenly spaced (from {gaps.min():.3g} to {gaps.max():.3g} mm "
                          f"apart, mostly {typical:.3g} mm): is a slice missing? Stacked at one spacing, the slices "
                          "after the gap would be misplaced; complete the series")


def check_volume(image: sitk.Image, name: str) -> sitk.Image:
    """Raise a clear error unless ``image`` is a usable 3D scalar volume; returns it (a 4D file with one time
    point as 3D)."""
    image = check_volume_grid(image, name)
    values = sitk.GetArrayViewFromImage(image)
    if values.min() == values.max():
        raise InputImageError(f"{name}: every voxel has the same value ({values.min()}); the volume carries no image")
    return image


def _require_volume_shape(dimension: int, size: Sequence[int], components: int, name: str) -> None:
    """A 3D (or 4D with one time point) scalar grid of at least two voxels along each axis."""
    if components != 1:
        raise InputImageError(f"{name}: has {components} components per voxel (vector/RGB); "
                              "a scalar (grey-value) volume is needed")
    if dimension == 4 and size[3] == 1:
        dimension, size = 3, size[:3]
    if dimension != 3:
        raise InputImageError(f"{name}: is {dimension}D with size {tuple(size)}; a 3D volume is needed")
    if min(size) < 2:
        raise InputImageError(f"{name}: size {tuple(size)} is a single slice, not a volume; a 3D volume is needed")


def require_utf8_name(path: PathLike, error: type = InputImageError) -> None:
    """Refuse a path that is not valid UTF-8 (a name made under another encoding, e.g. Latin-1 on Linux, comes to
    Python with its undecodable bytes escaped): ITK cannot be given such a name, and aborted the whole process
    with a C++ error instead."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise error(f"{shown}: its name is not valid UTF-8 (it was made under another character encoding), which "
                    "ITK cannot open or write; rename it (or the folder)") from None


def check_volume_header(path: PathLike) -> None:
    """Before a batch is worked through: a volume file is readable and shaped like a 3D scalar volume, from
    its header alone (milliseconds), so that a bad file among many is named before the first one is processed.
    Its voxels are checked when it is read; DICOM series folders only then."""
    p = Path(path)
    require_utf8_name(p)
    if not p.exists():
        raise InputImageError(f"{p}: no such file or folder")
    if p.is_dir():
        return
    voxel_file = _require_voxel_file(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    _read(lambda _: reader.ReadImageInformation(), p)
    _require_volume_shape(reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), str(p))
    if voxel_file is not None and voxel_file.uncompressed:
        item_bytes = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
        expected = int(np.prod(reader.GetSize(), dtype=np.int64)) * item_bytes
        present = voxel_file.path.stat().st_size
        if present < expected:
            raise InputImageError(f"{p}: its voxel file {voxel_file.path.name} is cut short ({present} of the "
                                  f"{expected} bytes the header describes)")


def _require_voxel_file(header: Path) -> Optional["_VoxelFile"]:
    """The voxel file a detached header names (see :func:`_detached_voxel_file`), refused when it is missing (ITK
    says "No such file or directory" about the header it did find)."""
    voxel_file = _detached_voxel_file(header)
    if voxel_file is not None and not voxel_file.path.is_file():
        raise InputImageError(f"{header}: its voxel file {voxel_file.path.name}, named in the header, is missing; "
                              "keep the two files together")
    return voxel_file


@dataclass(frozen=True)
class _VoxelFile:
    path: Path
    uncompressed: bool


# Detached headers and the keys that name their voxel file (MetaImage .mhd, NRRD .nhdr).
_VOXEL_FILE_KEYS = {".mhd": (("elementdatafile",), "="), ".nhdr": (("data file", "datafile"), ":")}


def _detached_voxel_file(header: Path) -> Optional[_VoxelFile]:
    """The voxel file a detached header names (None for other files, voxels inside the header, or a list or
    pattern of files, which ITK checks when reading). Checked before the batch: a header copied without its .raw,
    or a .raw cut short, otherwise passes and fails in the middle (ITK then reports a cut .raw as "No such file
    or directory")."""
    keys = _VOXEL_FILE_KEYS.get(header.suffix.lower())
    if keys is None:
        return None
    fields = {}
    for line in header.read_text(encoding="latin-1", errors="replace").splitlines():
        key, separator, value = line.partition(keys[1])
        if separator:
            fields[key.strip().lower()] = value.strip()
    name = next((fields[key] for key in keys[0] if key in fields), "")
    if not name or name.upper() == "LOCAL" or name.upper().startswith("LIST") or "%" in name:
        return None
    compressed = fields.get("compresseddata", "").lower() == "true" or fields.get("encoding", "raw") != "raw"
    return _VoxelFile(path=header.parent / name, uncompressed=not compressed)


def check_volume_grid(image: sitk.Image, name: str) -> sitk.Image:
    """:func:`check_volume` without the demand for contrast: a 3D scalar grid of finite values, which is all
    a mask needs (a healthy case's ground truth is all zero)."""
    _require_volume_shape(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), name)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    values = sitk.GetArrayViewFromImage(image)
    if values.size == 0:
        raise InputImageError(f"{name}: is empty")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InputImageError(f"{name}: {_NON_FINITE}")
    if values.dtype == np.float64:
        _require_float32_range(values, name)
    return image


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _require_float32_range(values: np.ndarray, name: str) -> None:
    """Every computation runs in float32, where values beyond about 3.4e38 become infinite: the registration
    then ran for ever (a float64 scan multiplied by 1e37 held it for 11 minutes, deaf to Ctrl-C)."""
    peak = max(float(values.max()), -float(values.min()))
    if peak > _FLOAT32_MAX:
        raise InputImageError(f"{name}: has values up to {peak:.3g} in magnitude, beyond the largest a float32 holds "
                              f"({_FLOAT32_MAX:.3g}), in which everything is computed; rescale its intensities")


def physical_points(image: sitk.Image, index_xyz: np.ndarray) -> np.ndarray:
    """Physical points (LPS, mm) of voxel indices ``(N, 3)`` (x, y, z order; fractional ones too) of ``image``."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (index_xyz * np.array(image.GetSpacing())) @ direction.T


def inside_grid(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Which physical points ``(N, 3)`` lie within ``image``'s voxels (up to half a voxel beyond the centres)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index = np.linalg.solve(direction, (points - np.array(image.GetOrigin())).T).T / np.array(image.GetSpacing())
    return np.all((index >= -0.5) & (index <= np.array(image.GetSize()) - 0.5), axis=1)


def same_grid(image: sitk.Image, other: sitk.Image) -> bool:
    """Whether two volumes share size, spacing, origin and direction, i.e. voxel (i, j, k) of one lies where
    voxel (i, j, k) of the other does (equal size and spacing alone do not: a flipped copy has both)."""
    return (image.GetSize() == other.GetSize()
            and np.allclose(image.GetSpacing(), other.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetOrigin(), other.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetDirection(), other.GetDirection(), atol=1e-4))


def read_image(path: PathLike) -> sitk.Image:
    """Read a 3D scalar volume from a file or a DICOM series folder, checked (see :func:`check_volume`)."""
    p = Path(path)
    return check_volume(_read_volume(p), str(p))


def read_mask(path: PathLike) -> sitk.Image:
    """Read a label volume like :func:`read_image`, but one value only is allowed (see
    :func:`check_volume_grid`)."""
    p = Path(path)
    return check_volume_grid(_read_volume(p), str(p))


def _read_volume(p: Path) -> sitk.Image:
    """The volume in a file or DICOM series folder, before any check of its content."""
    require_utf8_name(p)
    if not p.exists():
        raise InputImageError(f"{p}: no such file or folder")
    if p.is_dir():
        return _read(_read_dicom_series, p)
    if volume_suffix(p) not in (".nii", ".nii.gz"):
        _require_voxel_file(p)
        return _read(lambda q: sitk.ReadImage(str(q)), p)
    with WaitingThreadPool(max_workers=1) as side:
        # ITK reads a truncated NIfTI file without complaint (missing voxels come back as zeros or garbage) and
        # turns NaN and infinite voxels into zeros, so the file is scanned beside the read, on the other core:
        # its bytes are counted and compared with the header's, its float voxels checked
        scan = side.submit(_scan_nifti, p)
        try:
            image = _read(lambda q: sitk.ReadImage(str(q)), p)
        except InputImageError as exc:
            if "nifti_image_load failed" not in str(exc):
                raise
            scan.result()  # a damaged file is named as such; one that scans whole failed for want of memory
            raise _no_memory_to_read(p) from None
        _check_nifti_complete(p, image, scan.result().bytes_present)
    if scan.result().non_finite:
        raise InputImageError(f"{p}: {_NON_FINITE}")
    _note_sform_disagreement(image, scan.result().header, p)
    return image


#: Metadata key of a warning about a volume's geometry, carried with the image into the detection's summary.
GEOMETRY_WARNING_KEY = "MedAutoencoder.geometry_warning"
_SFORM_TOLERANCE_MM = 0.5


def _note_sform_disagreement(image: sitk.Image, header: bytes, path: Path) -> None:
    """Warn (in the image's metadata, see :data:`GEOMETRY_WARNING_KEY`) when a NIfTI's sform places the voxels
    elsewhere than ITK does: with both a qform and an sform, ITK uses the qform (also when the sform is sheared),
    FSL and nibabel the sform, so outputs (written with ITK's placement in both) would overlay the input in ITK and
    3D Slicer but appear shifted against it there. Not refused: for this tool's own use the two agree."""
    order = _nifti1_byte_order(header)
    if order is None or image.GetDimension() != 3 or int(np.frombuffer(header[254:256], f"{order}i2")[0]) <= 0:
        return  # (no sform)
    sform = np.frombuffer(header[280:328], f"{order}f4").reshape(3, 4).astype(float)  # index to RAS
    size = np.array(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    itk_ras = physical_points(image, corners) * np.array([-1.0, -1.0, 1.0])  # LPS to RAS
    apart = float(np.linalg.norm(corners @ sform[:, :3].T + sform[:, 3] - itk_ras, axis=1).max())
    if apart > _SFORM_TOLERANCE_MM:
        image.SetMetaData(GEOMETRY_WARNING_KEY, (
            f"{path}: its header's sform places the volume up to {apart:.1f} mm from the qform that ITK (and so this "
            "tool and 3D Slicer) uses; FSL and nibabel use the sform, so there the outputs appear shifted against "
            "the input. Make the two agree (e.g. fslorient -copyqform2sform, or nibabel's set_sform)"))


def _read(reader: Callable[[Path], sitk.Image], path: Path) -> sitk.Image:
    try:
        return reader(path)
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        if is_out_of_memory(exc):  # the file is fine: the machine is full
            raise _no_memory_to_read(path) from None
        reason = itk_reason(exc)
        if path.is_file() and "No such file or directory" in reason:  # ITK's stale system error of a short read
            raise InputImageError(f"{path}: cannot be read: its voxel data is incomplete or damaged") from None
        if path.is_file() and "Unable to determine ImageIO reader" in reason:
            raise InputImageError(f"{path}: {_unknown_format_reason(path)}") from None
        raise InputImageError(f"{path}: cannot be read as a medical image ({reason})") from None


_NIFTI2_HEADER_BYTES = 540


def _unknown_format_reason(path: Path) -> str:
    """Why no ITK reader takes a file: a NIfTI-2 header (ITK reads NIfTI-1 only), or content of no known format."""
    try:
        with (igzip.open if _is_gzipped(path) else open)(path, "rb") as stream:
            start = stream.read(4)
    except (EOFError, OSError, isal_zlib.error):
        start = b""
    if len(start) == 4 and _NIFTI2_HEADER_BYTES in (int.from_bytes(start, "little"), int.from_bytes(start, "big")):
        return ("is a NIfTI-2 file, which ITK (and so this tool) cannot read; save it as NIfTI-1 (e.g. nibabel's "
                "Nifti1Image; NIfTI-2 is only needed for volumes over 32767 voxels along an axis)")
    return ("cannot be read as a medical image: its content is in no format ITK reads (NIfTI-1, NRRD, MetaImage; a "
            "DICOM series as its folder)")


def _is_gzipped(path: Path) -> bool:
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def _no_memory_to_read(path: Path) -> OutOfMemoryError:
    return OutOfMemoryError(f"{path}: not enough memory to read it; {OUT_OF_MEMORY_ADVICE}")


@dataclass
class _NiftiScan:
    bytes_present: int  # of the decompressed file
    non_finite: bool  # a float voxel is NaN or infinite
    header: bytes = b""


_NIFTI1_HEADER_BYTES = 348
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64 voxels


def _nifti1_byte_order(header: bytes) -> Optional[str]:
    """NumPy's byte-order mark ("<" or ">") of a whole NIfTI-1 header, or None when ``header`` is not one."""
    if len(header) < _NIFTI1_HEADER_BYTES:
        return None
    return next((o for o in "<>" if np.frombuffer(header[:4], f"{o}i4")[0] == _NIFTI1_HEADER_BYTES), None)


def _nifti_float_voxels(header: bytes) -> Tuple[Optional[np.dtype], int]:
    """The voxels' float dtype (None for integer types, which cannot hold NaN) and the data's offset, from a
    NIfTI-1 header in either byte order (ITK reads no NIfTI-2); (None, 0) when it is not one."""
    order = _nifti1_byte_order(header)
    if order is None:
        return None, 0
    float_type = _NIFTI_FLOAT_TYPES.get(int(np.frombuffer(header[70:72], f"{order}i2")[0]))
    offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
    return (np.dtype(f"{order}{float_type}") if float_type else None), offset


def _scan_nifti(path: Path) -> _NiftiScan:
    """Read the (decompressed) NIfTI file once: count its bytes and look for NaN or infinite float voxels.
    Raises InputImageError when the compressed data is corrupt."""
    # ISA-L: a third of zlib's time; an uncompressed NIfTI named .nii.gz is read by ITK alike
    opener = igzip.open if _is_gzipped(path) else open
    non_finite = False
    try:
        with opener(path, "rb") as stream:
            header = stream.read(_NIFTI1_HEADER_BYTES)
            float_type, data_start = _nifti_float_voxels(header)
            present = len(header) + len(stream.read(max(0, data_start - len(header))))
            # reads return whole chunks until the end of the file, and a chunk holds whole voxels
            for chunk in iter(lambda: stream.read(1 << 22), b""):
                present += len(chunk)
                if float_type is not None and not non_finite:
                    voxels = np.frombuffer(chunk, float_type, count=len(chunk) // float_type.itemsize)
                    non_finite = not np.isfinite(voxels).all()
    except (EOFError, OSError, isal_zlib.error):
        raise InputImageError(f"{path}: is truncated or corrupt (the compressed data ends early)") from None
    return _NiftiScan(bytes_present=present, non_finite=non_finite, header=header)


def _check_nifti_complete(path: Path, image: sitk.Image, present: int) -> None:
    """Compare the bytes present with the bytes the header promises."""
    try:
        voxel_bytes = int(image.GetMetaData("bitpix")) // 8
        expected = int(float(image.GetMetaData("vox_offset"))) + image.GetNumberOfPixels() * \
            image.GetNumberOfComponentsPerPixel() * voxel_bytes
    except (RuntimeError, ValueError):
        return
    if present < expected:
        raise InputImageError(f"{path}: is truncated (holds {present} of the {expected} bytes its header promises)")


def pair_by_stem(images: Sequence[Path], candidates: Sequence[Path], matches: Callable[[str, str], bool],
                 what: str, missing: str) -> List[Tuple[Path, Path]]:
    """Match each image to the one candidate whose stem ``matches(image_stem, candidate_stem)``, preferring a
    candidate in the image's own folder; an ambiguous match is an error, never a silent guess.

    Args:
        images: the image files.
        candidates: the files to match them with (masks, label maps); an image itself is never its own match.
        matches: whether a candidate's stem goes with an image's stem.
        what: the candidates' name in messages ("masks", "label maps").
        missing: the message for an image without a match, formatted with ``stem``.

    Returns:
        (image, candidate) pairs in the images' order.

    Raises:
        InputImageError: an image without a match, or with several.
    """
    pairs = []
    for image in images:
        stem = volume_stem(image)
        found = [c for c in candidates if c != image and matches(stem, volume_stem(c))]
        chosen = [c for c in found if c.parent == image.parent] or found
        if not chosen:
            raise InputImageError(f"{image}: " + missing.format(stem=stem))
        if len(chosen) > 1:
            raise InputImageError(f"{image}: several {what} match ({', '.join(map(str, chosen))}); give one per image")
        pairs.append((image, chosen[0]))
    return pairs


def find_volumes(sources: Sequence[PathLike]) -> List[Path]:
    """Expand files, folders and glob patterns into a sorted list of volumes.

    A folder contributes its volume files, or itself when it is a DICOM series folder. A volume named more than
    once (``good good/v0.nii.gz``, a link, ``..``) is listed once, under its first spelling: counted twice it
    would weigh double in training and could land in the training and the validation share at once.
    """
    found: List[Path] = []
    for source in sources:
        text = os.fspath(source)
        literal = not glob.has_magic(text) or os.path.exists(text)  # a file may be named "sub[01].nii.gz"
        matches = [Path(text)] if literal else [Path(m) for m in sorted(glob.glob(text))]
        if not matches:
            raise InputImageError(f"{text}: pattern matches no files")
        for match in matches:
            found.extend(_volumes_in(match))
    first_spelling: Dict[Path, Path] = {}
    for path in found:
        first_spelling.setdefault(path.resolve(), path)
    unique = list(first_spelling.values())
    if not unique:
        raise InputImageError(f"no volumes found in {', '.join(os.fspath(s) for s in sources)}")
    return unique


def _volumes_in(path: Path) -> Iterable[Path]:
    if not path.exists():
        raise InputImageError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    # hidden files are not scans: macOS's "._scan.nii.gz" resource forks, our own ".x.partial" writes
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and volume_suffix(p) and not p.name.startswith(".") and not is_detection_output(p))
    if files:
        return files
    subfolders = sorted(p for p in path.iterdir() if p.is_dir())
    if sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)):
        return [path]
    return [p for p in subfolders if sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))]


def is_detection_output(path: Path) -> bool:
    """Whether ``path`` is a volume an earlier detection wrote (``<stem>_<kind>`` of :data:`OUTPUT_KINDS` beside
    its ``<stem>_summary.json``). A folder's scan skips them: detected into its own folder, a folder's second
    detection would take the first one's outputs for scans (and, with --overwrite, refuse to replace them as
    inputs)."""
    stem = volume_stem(path)
    return any(stem.endswith(f"_{kind}") and (path.parent / f"{stem[:-len(kind) - 1]}{SUMMARY_SUFFIX}").is_file()
               for kind in OUTPUT_KINDS)


def output_path(input_path: PathLike, output_dir: PathLike, kind: str, fmt: str | None = None) -> Path:
    """``<output_dir>/<stem>_<kind>.<ext>``; the input's own format unless ``fmt`` is given."""
    if fmt is None:
        suffix = volume_suffix(input_path)
        fmt = suffix[1:] if suffix and suffix not in (".nhdr", ".mhd") else "nrrd"
    if fmt not in OUTPUT_FORMATS:
        raise InputImageError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    return Path(output_dir) / f"{volume_stem(input_path)}_{kind}.{fmt}"


def refuse_overwrite(paths: Iterable[Path], protected: Iterable[Path] = (), overwrite: bool = False) -> None:
    """Raise before anything is written if a target is one of the user's inputs (always) or exists (unless
    ``overwrite``: replacing earlier outputs is what it is for, replacing an input never is)."""
    protected_set = {Path(p).resolve() for p in protected}
    for path in paths:
        if path.resolve() in protected_set:
            raise OutputExistsError(f"{path}: output would overwrite an input; choose another output name or folder")
        if path.is_dir():
            raise OutputExistsError(f"{path}: a folder has this output's name; rename it or choose another output "
                                    "folder")
        if path.exists() and not path.is_file():  # replaced by a rename, a device (/dev/null) became a file
            raise OutputExistsError(f"{path}: is not a regular file (a device, pipe or socket); choose a file name")
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path}: already exists; pass --overwrite to replace it")


def require_writable_folder(folder: PathLike) -> None:
    """Check before any work that files can be written into ``folder`` (made when missing): a run whose
    results cannot be saved at its end is lost."""
    _require_writable_below(Path(folder), Path(folder).absolute())


def require_writable_file(path: PathLike, example_name: str) -> None:
    """:func:`require_writable_folder` for a single file at ``path``; ``example_name`` is suggested as a file
    name when ``path`` is an existing folder."""
    target = Path(path)
    if target.is_dir():
        raise OutputLocationError(f"{target}: is an existing folder; give the name of the file to write "
                                  f"(e.g. {target / example_name})")
    if os.fspath(path).endswith(("/", os.sep)):  # Path drops the slash: "new/" was written as a file "new"
        raise OutputLocationError(f"{os.fspath(path)}: ends in a slash, so it names a folder; give the name of the "
                                  f"file to write (e.g. {target / example_name})")
    _require_writable_below(target, target.absolute().parent)


def require_new_file(path: PathLike, example_name: str, overwrite: bool = False,
                     protected: Iterable[Path] = ()) -> None:
    """Before any work: a file can be written at ``path`` (:func:`require_writable_file`), it is none of the
    ``protected`` inputs, and it does not exist yet unless ``overwrite`` (:func:`refuse_overwrite`)."""
    require_writable_file(path, example_name)
    refuse_overwrite([Path(path)], protected=protected, overwrite=overwrite)


def _require_writable_below(target: Path, folder: Path) -> None:
    """``target`` will be written in ``folder``: its nearest existing ancestor must be a folder we can write."""
    require_utf8_name(target.absolute(), OutputLocationError)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputLocationError(f"{target}: cannot be written: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{target.name}.probe"):
            pass
    except OSError as exc:
        raise OutputLocationError(f"{target}: cannot write into {existing} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def replacing(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` (``.<name>.partial<suffix>``) to write to: on success it replaces
    ``path`` in one step, on failure it is removed, so that an interrupted write never leaves a half-written
    file under the final name, nor a leftover beside the user's files."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial{suffix}")
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_image(image: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write ``image`` through a temporary file (:func:`replacing`), compressed where the format allows unless
    ``compress`` is False (for files read back at once: compressing a 256x256x180 float volume in NRRD takes
    0.45 s, writing it raw 0.02 s). A ``.nii.gz`` is compressed whatever ``compress`` says."""
    target = Path(path)
    with replacing(target, volume_suffix(target) or ".nrrd") as temporary:  # ITK picks the format by suffix
        write_image_directly(image, temporary, compress)
    return target


def write_image_directly(image: sitk.Image, path: Path, compress: bool = True) -> None:
    """:func:`write_image` without a temporary name of its own, for a ``path`` that is one already (a batch's
    hidden output names, :mod:`~MedAutoencoderLib.io.outputs`): a second one inside it would make the names longer
    than Windows' 260-character path limit sooner."""
    if volume_suffix(path) == ".nii.gz":
        _write_gzipped_nifti(image, path)
    else:
        sitk.WriteImage(image, str(path), useCompression=compress)


def _write_gzipped_nifti(image: sitk.Image, path: Path) -> None:
    """ISA-L's gzip (``isal``) compresses the NIfTI that ITK would write: 2.5x less time than ITK's zlib for the same
    size (a float32 volume of 256x256x180 in 0.2 s instead of 0.5 s). The result is one ordinary gzip stream that
    every NIfTI reader opens. The voxels go from memory straight into the stream behind ITK's own header
    (:func:`_nifti1_header`); where that header cannot be had, ITK writes the whole file uncompressed first."""
    raw = path.with_name(path.name[:-len(".gz")])
    try:
        header = _nifti1_header(image, raw)
        if header is None:
            sitk.WriteImage(image, str(raw), useCompression=False)
        with igzip.open(path, "wb", compresslevel=1) as sink:
            if header is None:
                with open(raw, "rb") as source:
                    shutil.copyfileobj(source, sink, 1 << 22)
            else:
                sink.write(header)
                voxels = memoryview(sitk.GetArrayViewFromImage(image)).cast("B")
                for start in range(0, len(voxels), 1 << 22):
                    sink.write(voxels[start:start + (1 << 22)])
    finally:
        raw.unlink(missing_ok=True)


_NIFTI1_VOXEL_OFFSET = 352  # ITK's NIfTI-1 files: the 348-byte header, 4 bytes of extension flags, the voxels


def _nifti1_header(image: sitk.Image, scratch: Path) -> Optional[bytes]:
    """The bytes that ITK writes before ``image``'s voxels in an uncompressed NIfTI-1 file: ITK writes them for a
    one-voxel image of the same geometry, pixel type and metadata at ``scratch``, then its sizes are set to
    ``image``'s (no other field of ITK's header depends on them; the tests compare whole files). None for an image
    that is not 3D and scalar, or a header that is not a little-endian NIfTI-1 one with its voxels at 352 (then
    the caller lets ITK write the file)."""
    size = image.GetSize()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 or max(size) > 32767:
        return None
    voxel = sitk.Image([1, 1, 1], image.GetPixelID())
    voxel.SetOrigin(image.GetOrigin())
    voxel.SetSpacing(image.GetSpacing())
    voxel.SetDirection(image.GetDirection())
    for key in image.GetMetaDataKeys():
        voxel.SetMetaData(key, image.GetMetaData(key))
    sitk.WriteImage(voxel, str(scratch), useCompression=False)
    with open(scratch, "rb") as stream:
        header = bytearray(stream.read(_NIFTI1_VOXEL_OFFSET + 1))
    little = len(header) > _NIFTI1_VOXEL_OFFSET and header[344:348] == b"n+1\0" \
        and int.from_bytes(header[0:4], "little") == 348
    if not little or np.frombuffer(bytes(header[108:112]), "<f4")[0] != _NIFTI1_VOXEL_OFFSET \
            or tuple(np.frombuffer(bytes(header[40:48]), "<i2")) != (3, 1, 1, 1):
        return None
    header[42:48] = np.array(size, "<i2").tobytes()
    return bytes(header[:_NIFTI1_VOXEL_OFFSET])


def write_text(path: Path, text: str, overwrite: bool = False) -> Path:
    """Write a text file (JSON summaries, reports) through a temporary name, refusing to replace an existing
    file unless ``overwrite``."""
    target = Path(path)
    if not overwrite:
        refuse_overwrite([target])
    with replacing(target) as temporary:
        temporary.write_text(text)
    return target
