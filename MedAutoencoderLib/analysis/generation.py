"""Images from the latent space: samples from a VAE's prior and interpolations between two volumes.

Both show what a model has learned of normal anatomy (a VAE's samples should look like plausible slices; an
interpolation shows whether the code space is smooth). Images are on the model grid in normalised intensities
(there is no input volume to take intensity units from), written as a NIfTI stack of axial slices with the
model grid's spacing and as a PNG picture. Slice-wise (2D) models only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from MedAutoencoderLib.detection.inference import foreground_slices
from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.loaded_model import LoadedModel
from MedAutoencoderLib.io.volumes import refuse_overwrite, write_image
from MedAutoencoderLib.networks.latent import code_shape, decode_codes, encode_slices, require_decoder
from MedAutoencoderLib.preprocessing.prepare import prepare_volume

_MAX_NIFTI_SLICES = 32767  # NIfTI-1 stores each dimension as a 16-bit integer


def _require_stackable(count: int, what: str) -> None:
    """Before any decoding: the slices must fit the NIfTI stack they are written as (ITK failed on writing them,
    after all the work, with a traceback)."""
    if count > _MAX_NIFTI_SLICES:
        raise ConfigurationError(f"{count} {what} do not fit one NIfTI volume (at most {_MAX_NIFTI_SLICES} slices); "
                                 "ask for fewer")


def sample_prior(model: LoadedModel, n: int, seed: int = 0) -> np.ndarray:
    """``n`` slices ``(n, y, x)`` decoded from codes drawn from the VAE's prior N(0, I)."""
    if model.record.model.name != "vae":
        raise ConfigurationError(f"{model.path}: sampling needs a VAE (trained with --model vae); this is a "
                                 f"{model.record.model.name} model, whose codes have no prior to draw from")
    if n < 1:
        raise ConfigurationError(f"the number of samples must be at least 1, got {n}")
    _require_stackable(n, "samples")
    require_decoder(model, "sampling")
    generator = torch.Generator().manual_seed(seed)
    return decode_codes(model, torch.randn((n, *code_shape(model)), generator=generator))


def central_slice_code(model: LoadedModel, image: sitk.Image, name: str) -> torch.Tensor:
    """The code ``(1, c, h, w)`` of the central axial foreground slice of ``image`` on the model grid."""
    prepared = prepare_volume(image, model.record.preprocess, name=name)
    slices = foreground_slices(prepared.foreground)
    z = int(slices[len(slices) // 2])
    return encode_slices(model, prepared.image[z:z + 1])


def interpolate(model: LoadedModel, first: sitk.Image, second: sitk.Image, steps: int,
                names: tuple = ("first", "second")) -> np.ndarray:
    """``steps`` slices decoded from codes on the straight line from ``first``'s central slice code to
    ``second``'s (endpoints included); a VAE's codes are its means."""
    require_decoder(model, "interpolation")
    if steps < 2:
        raise ConfigurationError(f"interpolation needs at least 2 steps, got {steps}")
    _require_stackable(steps, "interpolation steps")
    start = central_slice_code(model, first, names[0])
    end = central_slice_code(model, second, names[1])
    weights = torch.linspace(0.0, 1.0, steps).view(-1, 1, 1, 1)
    return decode_codes(model, (1.0 - weights) * start + weights * end)


def slice_stack(images: np.ndarray, model: LoadedModel) -> sitk.Image:
    """Slices ``(n, y, x)`` as one volume with the model grid's spacing (slice i at z = i)."""
    stack = sitk.GetImageFromArray(np.ascontiguousarray(images, dtype=np.float32))
    stack.SetSpacing([float(s) for s in model.record.preprocess.spacing])
    return stack


def picture(images: np.ndarray, columns: int) -> sitk.Image:
    """The slices tiled ``columns`` wide as an 8-bit image; one grey scale for all, so they compare.

    Row 0 of a model-grid slice is anterior (LPS grid), so anterior is at the top, the patient's right on the
    left (radiological view)."""
    low, high = np.percentile(images, [0.5, 99.5])
    scaled = np.clip((images - low) / max(high - low, 1e-6), 0.0, 1.0)
    tiles = [sitk.GetImageFromArray((s * 255).astype(np.uint8)) for s in scaled]
    return sitk.Tile(tiles, [columns, int(np.ceil(len(tiles) / columns))], 0)


def write_generated(images: np.ndarray, model: LoadedModel, output_dir: Union[str, Path], stem: str,
                    columns: int, overwrite: bool = False, protected: Sequence[Path] = ()) -> Dict[str, str]:
    """Write ``<stem>.nii.gz`` (slice stack) and ``<stem>.png`` (tiled picture) into ``output_dir``; the
    ``protected`` files (the inputs) are never replaced."""
    output_dir = Path(output_dir)
    png = output_dir / f"{stem}.png"
    refuse_overwrite([output_dir / f"{stem}.nii.gz", png], protected=protected, overwrite=overwrite)
    volume = write_image(slice_stack(images, model), output_dir / f"{stem}.nii.gz")
    sitk.WriteImage(picture(images, columns), str(png))
    return {"volume": str(volume), "picture": str(png)}
