"""Detection of one volume (:func:`detect_image`) and of a batch of files (:func:`detect_files`) with a loaded
model: preprocessing, reconstruction, scoring and outputs on the input's grid, written as they come."""
from __future__ import annotations

import contextlib
import json
import sys
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.config import DetectOptions, PreprocessConfig
from MedAutoencoderLib.detection.inference import reconstruct
from MedAutoencoderLib.detection.read_ahead import prepared_in_order
from MedAutoencoderLib.detection.scoring import (
    ERROR_LEVEL_WARNING_RATIO,
    DetectionResult,
    ScoredVolume,
    anomaly_map_on_input_grid,
    finish_detection,
    reconstruction_on_input_grid,
    score_volume,
    to_error_level,
)
from MedAutoencoderLib.errors import (
    BatchDetectionError,
    ConfigurationError,
    InputImageError,
    MedAutoencoderError,
    ModelFileError,
    OutOfMemoryError,
    OutputExistsError,
    detection_out_of_memory_reason,
    is_cuda_failure,
    is_out_of_memory,
)
from MedAutoencoderLib.io.loaded_model import LoadedModel, bundled_contrasts
from MedAutoencoderLib.io.outputs import PendingOutputs, pending_path
from MedAutoencoderLib.io.volumes import (
    OUTPUT_KINDS,
    SUMMARY_SUFFIX,
    check_volume_header,
    output_path,
    read_image,
    refuse_overwrite,
    require_writable_folder,
    volume_stem,
    write_image_directly,
)
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, prepare_volume
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker
from MedAutoencoderLib.runtime.threads import WaitingThreadPool


def _threshold(model: LoadedModel, options: DetectOptions, contrast: Optional[Dict[str, Any]] = None) -> float:
    """The threshold a detection uses: the user's, else the model's calibrated one for the input's ``contrast``
    (a summary's "contrast" entry; :func:`calibrated_threshold`)."""
    if options.threshold is not None:
        return float(options.threshold)
    if model.record.threshold is None:
        raise ModelFileError(f"{model.path}: has no calibrated threshold (its training was interrupted before "
                             "calibration); give a threshold explicitly")
    return float(calibrated_threshold(model, contrast))


def calibrated_threshold(model: LoadedModel, contrast: Optional[Dict[str, Any]]) -> Optional[float]:
    """The model's calibrated threshold for an input of ``contrast`` (a summary's "contrast" entry): that of its
    contrast, or for an input that may be any of several contrasts ("candidates") the highest of theirs, so that
    no healthy scan of any of them is flagged more than the calibration allows; None for an uncalibrated model."""
    thresholds = [model.record.threshold_for(name) for name in _contrast_names(contrast)]
    return None if any(t is None for t in thresholds) else max(float(t) for t in thresholds)


def _contrast_names(contrast: Optional[Dict[str, Any]]) -> List[Optional[str]]:
    """The contrast an input was read as, or the candidates it may be (a summary's "contrast" entry)."""
    contrast = contrast or {}
    return [contrast.get("name")] if contrast.get("name") else list(contrast.get("candidates") or [None])


def healthy_error_level(model: LoadedModel, contrast: Optional[Dict[str, Any]]) -> Optional[float]:
    """The healthy calibration scans' error level for an input of ``contrast`` (for one that may be any of several
    contrasts, the lowest of theirs: its map is divided the most, as with the highest threshold); None where the
    model has none recorded."""
    levels = [model.record.error_level_for(name) for name in _contrast_names(contrast)]
    return None if any(level is None for level in levels) else min(float(level) for level in levels)


def _error_level_entry(scored: ScoredVolume, healthy: Optional[float]) -> Tuple[Dict[str, Any], Optional[str]]:
    """The summary's "error_level" entry and, for a scan far out of the model's domain, its warning (else None)."""
    out_of_domain = bool(healthy) and scored.error_level >= ERROR_LEVEL_WARNING_RATIO * healthy
    entry = {"input": round(scored.error_level, 6), "healthy": healthy, "map_divided_by": round(scored.divided_by, 4),
             "out_of_domain": out_of_domain}
    if not out_of_domain:
        return entry, None
    ratio = scored.error_level / healthy
    return entry, (f"it is reconstructed {ratio:.1f} times worse than the healthy scans the model was calibrated on "
                   "(another scanner, protocol or contrast than its training data?): its anomaly map was divided by "
                   f"{ratio:.1f}, so only what stands out within this scan is flagged; calibrate the model on healthy "
                   "scans of this site (calibrate) or fine-tune it (train --init) before trusting it here")


@dataclass
class DetectionRun:
    """Intermediate results of one detection, for evaluation and debugging."""

    prepared: PreparedVolume
    reconstruction: np.ndarray  # model grid, normalised
    scored: ScoredVolume
    result: DetectionResult


OutputCallback = Callable[[str, sitk.Image], None]


def run_detection(image: sitk.Image, model: LoadedModel, options: Optional[DetectOptions] = None,
                  name: str = "input", on_output: Optional[OutputCallback] = None) -> DetectionRun:
    """:func:`detect_image`, keeping the model-grid intermediates. ``on_output(kind, image)`` receives each
    output of :data:`OUTPUT_KINDS` as soon as it exists (the reconstruction before scoring), so that a caller
    can write it while the rest is computed."""
    return detect_prepared(prepare_volume(image, model.record.preprocess, name=name), model, options, on_output)


def detect_prepared(prepared: PreparedVolume, model: LoadedModel, options: Optional[DetectOptions] = None,
                    on_output: Optional[OutputCallback] = None) -> DetectionRun:
    """:func:`run_detection` on a volume already brought onto the model grid (:func:`prepare_volume` with the
    model's preprocessing), as a batch prepares its next volumes ahead of the network."""
    options = options or DetectOptions()
    options.validate()
    _threshold(model, options)  # a model without a threshold fails before any work
    prepared, model, contrast = _model_for_input(prepared, model, options.contrast)
    record = model.record
    threshold = _threshold(model, options, contrast.get("contrast"))
    reconstruction = reconstruct(model.network, prepared, record.model, record.detection.batch_size, model.device,
                                 options.precision)
    reconstruction_image = reconstruction_on_input_grid(prepared, reconstruction)
    if on_output is not None:
        on_output("reconstruction", reconstruction_image)  # written while the scores are computed
    healthy = healthy_error_level(model, contrast.get("contrast"))
    scored = to_error_level(score_volume(prepared, reconstruction, record.detection), healthy)
    anomaly_map = anomaly_map_on_input_grid(prepared, scored)
    map_values = sitk.GetArrayViewFromImage(anomaly_map)  # taken before a writer holds the image too
    if on_output is not None:  # written while its components are found
        on_output("anomaly_map", anomaly_map)
    result = finish_detection(prepared, reconstruction_image, scored, threshold, record.detection, anomaly_map,
                              map_values)
    result.summary.update(calibrated_threshold=calibrated_threshold(model, contrast.get("contrast")),
                          threshold_source="calibrated" if options.threshold is None else "user", **contrast)
    result.summary["error_level"], warning = _error_level_entry(scored, healthy)
    if warning:
        result.summary.setdefault("warnings", []).append(warning)
    if on_output is not None:
        on_output("anomaly_mask", result.anomaly_mask)
    return DetectionRun(prepared=prepared, reconstruction=reconstruction, scored=scored, result=result)


def _one_model_for(model: LoadedModel, contrasts: List[str]) -> LoadedModel:
    """The bundled model made for every one of ``contrasts`` (an input that may be any of them), else ``model``."""
    others = {id(other): other for other in (model.for_contrast(name) for name in contrasts)}
    return next(iter(others.values())) if len(others) == 1 else model


def _model_for_input(prepared: PreparedVolume, model: LoadedModel, choice: str,
                     ) -> Tuple[PreparedVolume, LoadedModel, Dict[str, object]]:
    """The model an input runs through, checked against its contrast (:func:`input_contrast`): ``model``, or for
    the bundled set the bundled model of the input's contrast (the input brought onto that model's grid if it
    has another preprocessing)."""
    try:
        return prepared, model, input_contrast(prepared, model, choice)
    except InputImageError as refusal:
        found = getattr(refusal, "contrast", None)
        other = model.for_contrast(found) if found is not None else \
            _one_model_for(model, getattr(refusal, "candidates", []))
        if other is model and model.bundled_set and found is None:
            unknown = InputImageError(f"{prepared.name}: {refusal.found}; the bundled models are made for "
                                      f"{', '.join(bundled_contrasts())}: pass --contrast with the scan's contrast "
                                      "to choose one")
            unknown.contrast = None
            raise unknown from None
        if other is model:
            raise
    if other.record.preprocess != model.record.preprocess:
        prepared = prepare_volume(prepared.source, other.record.preprocess, name=prepared.name)
    return prepared, other, input_contrast(prepared, other, choice)


def model_name(model: LoadedModel) -> str:
    """How a summary and a refusal name the model: its file's name without .pt."""
    return model.path.stem if model.path is not None else "in memory"


def input_contrast(prepared: PreparedVolume, model: LoadedModel, choice: str = "auto") -> Dict[str, object]:
    """The input's MRI contrast checked against the model's: the summary's "model" and "contrast" entries.

    Args:
        prepared: the input on the model grid (its brain mask is the foreground of a brain-template model).
        model: the model; its file's contrasts, or those of its kind (:func:`~MedAutoencoderLib.brain.contrast.
            model_contrasts`).
        choice: "auto" identifies the contrast (:func:`~MedAutoencoderLib.brain.contrast.identify_contrast`:
            DICOM tags, else the tissue ordering inside the brain mask); a contrast name states it.

    Returns:
        The entries the summary gets: "model", "model_contrasts", "contrast" (and "contrast_note" for a model file
        that does not record its contrasts).

    Raises:
        InputImageError: the input's contrast is not one the model is made for, or cannot be told.
    """
    from MedAutoencoderLib.brain.contrast import (
        contrast_from_levels,
        contrast_from_tags,
        dicom_tags_of,
        identify_contrast,
        model_contrasts,
        require_model_contrast,
        user_contrast,
    )

    contrasts, note = model_contrasts(model.record.contrasts, model.record.preprocess.foreground)
    entries: Dict[str, object] = {"model": model_name(model), "model_contrasts": contrasts}
    if note:
        entries["contrast_note"] = note
    if choice != "auto":
        estimate = user_contrast(choice)
    elif contrasts is None and model.record.preprocess.foreground not in ("brain", "template"):
        entries["contrast"] = None  # no brain mask to read tissues in, nor contrasts to check against
        return entries
    elif prepared.tissue_levels is not None:
        # the learned extractor's brain: the levels of the tissues it is sure of, on its own grid (DICOM tags first)
        estimate = contrast_from_tags(dicom_tags_of(prepared.source)) or contrast_from_levels(prepared.tissue_levels)
    else:
        # the model grid's values in the input's units, its background outside the brain: the tissue ratios are
        # taken above the background
        values = np.where(prepared.foreground, prepared.denormalise(prepared.image), prepared.background)
        estimate = identify_contrast(prepared.on_grid(values.astype(np.float32)),
                                     prepared.on_grid(prepared.foreground.astype(np.uint8)),
                                     tags=dicom_tags_of(prepared.source))
    if contrasts is not None:
        require_model_contrast(estimate, contrasts, prepared.name, model_name(model))
    entries["contrast"] = estimate.summary()
    return entries


def detect_image(image: sitk.Image, model: LoadedModel, options: Optional[DetectOptions] = None,
                 name: str = "input") -> DetectionResult:
    """Reconstruction, anomaly map, anomaly mask and summary of one volume, on its own grid."""
    return run_detection(image, model, options, name).result


def detect_files(inputs: Sequence[Union[str, Path]], output_dir: Union[str, Path], model: LoadedModel,
                 options: Optional[DetectOptions] = None, output_format: Optional[str] = None,
                 overwrite: bool = False, progress: Optional[ProgressCallback] = None,
                 keep_going: bool = False, compress: bool = True) -> Dict[str, Dict[str, str]]:
    """Detect in each file, writing ``<stem>_{reconstruction,anomaly_map,anomaly_mask}`` and a summary JSON
    (``compress`` False: nrrd and mha outputs uncompressed, for a caller that reads them back at once).

    All target paths are checked before anything is written; the model is loaded once for all inputs. A
    volume's files get their names together once all are written (:mod:`~MedAutoencoderLib.io.outputs`): one that
    fails writes nothing, and an earlier run's outputs of it stay as they were. A volume that fails its checks,
    runs out of memory, or meets a defect stops the batch, saying where; with ``keep_going`` it is skipped and
    the batch ends with :class:`BatchDetectionError` naming every such volume, as a cohort run on a server wants.
    """
    options = options or DetectOptions()
    options.validate()
    paths, failures = _checked_headers([Path(p) for p in inputs], keep_going)
    require_writable_folder(output_dir)
    targets = {p: detection_targets(p, output_dir, output_format) for p in paths}
    if not compress:
        _refuse_compressed_format(targets)
    refuse_shared_targets(targets)
    refuse_overwrite([t for group in targets.values() for t in group.values()], protected=paths, overwrite=overwrite)
    tracker = ProgressTracker(progress, total=len(paths))
    tracker.emit("start", 0, f"detecting anomalies in {len(paths)} volume(s) on {model.device}")
    for reason in failures.values():
        tracker.emit("log", 0, f"skipped {reason}")
    written: Dict[str, Dict[str, str]] = {}
    in_flight: List[PendingOutputs] = []  # volumes done whose files may still be being written
    depth = options.volumes_ahead(len(paths))
    if depth and model.record.preprocess.foreground == "template":
        from MedAutoencoderLib.brain.registration import prepare_registration_template

        prepare_registration_template()  # once, here, not by each worker that finds the cache empty
    prepare = partial(_prepared_input, preprocess=model.record.preprocess)
    with _background_writers(targets) as writer, prepared_in_order(paths, prepare, depth) as prepared_volumes:
        for i, path in enumerate(paths):
            tracker.emit("progress", i, f"{path.name} ({i + 1}/{len(paths)})")
            outputs = PendingOutputs(writer)
            try:  # the prepared volume is not kept in a variable: it is freed as soon as its detection is done
                result = detect_prepared(next(prepared_volumes).result(), model, options,
                                         on_output=partial(_write_output, outputs, targets[path], compress)).result
                outputs.submit(targets[path]["summary"], partial(Path.write_text,
                                                                 data=json.dumps(result.summary, indent=2)))
            except BaseException as exc:
                outputs.discard()
                reason = _volume_failure(path, exc, i, len(paths), keep_going, tracker)
                failures[str(path)] = reason
                tracker.emit("log", i + 1, f"skipped {reason}")
                continue
            outputs.close()  # its files get their names as soon as all are written
            in_flight.append(outputs)
            if len(in_flight) > 1:
                in_flight.pop(0).wait()  # outputs of two volumes in flight at most: memory stays bounded
            written[str(path)] = {kind: str(target) for kind, target in targets[path].items()}
            for warning in result.summary.get("warnings", []):
                tracker.emit("log", i + 1, f"warning: {warning}")
            tracker.emit("progress", i + 1, f"{path.name}: score {result.summary['anomaly_score']:.4f}, "
                         f"{result.summary['anomalous_volume_ml']:.2f} mL flagged")
            del result  # its images (the writers hold what they still need) are not kept through the next volume
    for outputs in in_flight:
        outputs.wait()  # a failed write of the last volumes
    if failures:
        raise BatchDetectionError(written, failures, len(written) + len(failures))
    tracker.emit("done", len(paths), f"wrote outputs of {len(paths)} volume(s) to {output_dir}", outputs=written)
    return written


@contextlib.contextmanager
def _background_writers(targets: Dict[Path, Dict[str, Path]]) -> Iterator[WaitingThreadPool]:
    """Writer threads for a batch's outputs: each output is written as soon as it exists (compression releases
    the GIL) while the scores and the next volume are computed. On the way out, also when the batch is
    interrupted, every write has ended and every volume done has its files' names; a temporary file left by a
    write that an interruption (Ctrl-C, SIGTERM) cut off from its volume is removed, none stays hidden."""
    try:
        with WaitingThreadPool(max_workers=len(OUTPUT_KINDS) + 1, thread_name_prefix="write") as writer:
            yield writer
    finally:
        for group in targets.values():
            for target in group.values():
                pending_path(target).unlink(missing_ok=True)


def _prepared_input(path: Path, preprocess: PreprocessConfig) -> PreparedVolume:
    """A batch's volume read and brought onto the model grid (run ahead of the network in worker threads)."""
    return prepare_volume(read_image(path), preprocess, name=str(path))


def _write_output(outputs: PendingOutputs, targets: Dict[str, Path], compress: bool, kind: str,
                  image: sitk.Image) -> None:
    """Hand one output of a volume to the writers (the ``on_output`` of :func:`run_detection`)."""
    outputs.submit(targets[kind], partial(write_image_directly, image, compress=compress))


def _volume_failure(path: Path, error: BaseException, index: int, count: int, keep_going: bool,
                    tracker: ProgressTracker) -> str:
    """Why volume ``index`` of a batch failed, when the batch goes on (``keep_going``) after such a failure: its
    input checks, the machine's or the GPU's memory running out (a smaller volume after it may fit), or a
    defect (its traceback is printed for a report). Anything else is re-raised: a cancel, an error that is not
    about this volume (a model without a threshold, a GPU without bfloat16, fail every volume alike), or a CUDA
    error (the GPU is unusable from then on). Without ``keep_going`` a volume's failure is raised saying where
    the batch stopped."""
    where = _batch_context(index, count)
    if isinstance(error, InputImageError):
        reason = str(error)
    elif isinstance(error, OutOfMemoryError):  # the GPU's memory (not naming the volume), or too little to read it
        reason = str(error) if str(error).startswith(f"{path}:") else f"{path}: {error}"
    elif is_out_of_memory(error):
        reason = detection_out_of_memory_reason(path)
    elif isinstance(error, Exception) and not isinstance(error, MedAutoencoderError) and not is_cuda_failure(error):
        if not keep_going:  # a defect: its traceback is what a report needs; where it stopped, said first
            message = f"detection stopped at {path}{where} by the error below"
            tracker.emit("log", index, message)
            print(message, file=sys.stderr, flush=True)
            raise error
        traceback.print_exc()
        return f"{path}: failed with an unexpected error ({type(error).__name__}: {error}); this is a defect of " \
               "MedAutoencoder, please report it with the traceback printed above"
    else:
        raise error
    if not keep_going:
        raise (InputImageError if isinstance(error, InputImageError) else OutOfMemoryError)(f"{reason}{where}") \
            from None
    return reason


def _checked_headers(paths: List[Path], keep_going: bool) -> Tuple[List[Path], Dict[str, str]]:
    """Every file's header checked before the first volume is processed (:func:`check_volume_header`): the
    volumes to process and, with ``keep_going``, those whose header failed and why (else the first failure
    is raised)."""
    usable: List[Path] = []
    failures: Dict[str, str] = {}
    for path in paths:
        try:
            check_volume_header(path)
            usable.append(path)
        except InputImageError as exc:
            if not keep_going:
                raise
            failures[str(path)] = str(exc)
    if not usable:
        raise BatchDetectionError({}, failures, len(failures))
    return usable, failures


def _batch_context(index: int, count: int) -> str:
    """Where a failed volume stands in a batch: which volumes got outputs and which were not run."""
    if count == 1:
        return ""
    return f" (volume {index + 1} of {count}: outputs written for {index} volume(s) before it, " \
           f"{count - index - 1} after it not run)"


def detection_targets(input_path: Path, output_dir: Union[str, Path],
                      output_format: Optional[str] = None) -> Dict[str, Path]:
    """The files :func:`detect_files` writes for ``input_path``: one per kind of :data:`OUTPUT_KINDS` and the
    summary (also for callers that check them before any work)."""
    return {**{kind: output_path(input_path, output_dir, kind, output_format) for kind in OUTPUT_KINDS},
            "summary": Path(output_dir) / f"{volume_stem(input_path)}{SUMMARY_SUFFIX}"}


def _refuse_compressed_format(targets: Dict[Path, Dict[str, Path]]) -> None:
    """Uncompressed outputs asked for, but a gzipped NIfTI is compressed by its very name: say so before any
    work rather than write what was not asked for."""
    for source, group in targets.items():
        if str(group["reconstruction"]).endswith(".nii.gz"):
            raise ConfigurationError(f"{source}: uncompressed outputs were asked for, but its outputs would be "
                                     ".nii.gz (the input's format unless --format says otherwise), which is always "
                                     "compressed; choose another output format (--format nii, nrrd or mha)")


def refuse_shared_targets(targets: Dict[Path, Dict[str, Path]]) -> None:
    """Two inputs with the same name (a/x.nrrd, b/x.nrrd) would write the same outputs: refuse, naming both."""
    owner: Dict[str, Path] = {}
    for source, group in targets.items():
        key = str(group["summary"]).lower()
        if key in owner:
            raise OutputExistsError(f"{owner[key]} and {source} would write the same outputs "
                                    f"({group['summary'].name}...); detect them into different output folders")
        owner[key] = source
