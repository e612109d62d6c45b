"""How much a model's latent features say about a label: cross-validated scikit-learn classifiers.

Volumes are split by stratified k-fold; every volume gets an out-of-fold probability from a classifier that never
saw it, and accuracy and AUROC are computed once over all out-of-fold predictions. Their 95 % confidence
intervals come from a stratified bootstrap over those out-of-fold predictions (resampling volumes with
replacement within each class, so that every resample holds every class and AUROC is defined): it reflects the
finite test set, not the variance of retraining, which is the usual and cheaper choice for small cohorts.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from MedAutoencoderLib.analysis.features import FeatureTable
from MedAutoencoderLib.errors import ConfigurationError, TableFileError
from MedAutoencoderLib.io.volumes import volume_stem, volume_suffix

CLASSIFIERS = ("logreg", "forest")


@dataclass
class ClassifyConfig:
    """Choices of ``classify``."""

    classifier: str = "logreg"  # "logreg": standardised features + logistic regression; "forest": random forest
    folds: int = 5
    bootstrap_resamples: int = 2000
    seed: int = 0

    def validate(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ConfigurationError(f"classifier must be one of {', '.join(CLASSIFIERS)}, not {self.classifier!r}")
        if self.folds < 2:
            raise ConfigurationError(f"folds must be at least 2, got {self.folds}")
        if self.bootstrap_resamples < 1:
            raise ConfigurationError(f"bootstrap resamples must be at least 1 (the intervals are percentiles of "
                                     f"them), got {self.bootstrap_resamples}")


@dataclass
class ClassificationReport:
    """Out-of-fold accuracy and AUROC with bootstrap 95 % intervals."""

    classifier: str
    folds: int
    n_volumes: int
    class_counts: Dict[str, int]
    accuracy: float
    accuracy_ci: Tuple[float, float]
    auroc: float  # binary: of the second class (sorted); several classes: macro one-vs-rest
    auroc_ci: Tuple[float, float]
    ci_method: str  # how the intervals were computed, printed beside them

    def format(self) -> str:
        counts = ", ".join(f"{label}: {n}" for label, n in self.class_counts.items())
        return "\n".join([
            f"{self.classifier}, stratified {self.folds}-fold cross-validation on {self.n_volumes} volumes ({counts})",
            f"  accuracy {self.accuracy:.3f} (95% CI {self.accuracy_ci[0]:.3f}-{self.accuracy_ci[1]:.3f})",
            f"  AUROC    {self.auroc:.3f} (95% CI {self.auroc_ci[0]:.3f}-{self.auroc_ci[1]:.3f})",
            f"  CI: {self.ci_method}",
        ])


def _labels_text(path: Path) -> str:
    """The labels file as text. Excel writes "CSV UTF-8" with a byte-order mark and plain "CSV" in
    Windows-1252, so UTF-8 (with or without the mark) is tried first and Windows-1252 second; an image or other
    binary file is refused by name instead of failing somewhere inside the CSV reader."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TableFileError(f"{path}: labels file cannot be read ({exc.strerror or exc})") from None
    if b"\x00" in data:
        what = "an image volume" if volume_suffix(path) else "not a text CSV file"
        raise TableFileError(f"{path}: {what}; --labels needs a file,label CSV table")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise TableFileError(f"{path}: not a text CSV file (neither UTF-8 nor Windows-1252); "
                             "--labels needs a file,label CSV table") from None


def _cell(row: Dict[str, str], column: str, path: Path, line: int) -> str:
    """One stripped cell of a labels row; a short row (``None``) or an empty cell is an error naming the line."""
    value = (row.get(column) or "").strip()
    if not value:
        raise TableFileError(f"{path}, line {line}: no {column} (every row needs a file and its label)")
    return value


@dataclass
class LabelTable:
    """The rows of a ``file,label`` CSV: labels by the file as written there, and those files by volume name."""

    path: Path
    by_file: Dict[str, str]  # normalised path as written -> label
    files_by_name: Dict[str, List[str]]  # volume name without folder and extension -> normalised paths

    def label_of(self, file: str) -> Optional[str]:
        """The label of a feature-table file: the row with its path, else the rows whose volume has its name when
        they agree; None when no row fits. The path comes first because cohorts with one folder per subject
        (sub-01/anat/T1w.nii.gz) repeat names, while a labels file of bare names suits flat folders."""
        exact = self.by_file.get(_normalised(file))
        if exact is not None:
            return exact
        name = volume_stem(file)
        named = sorted({self.by_file[listed] for listed in self.files_by_name.get(name, [])})
        if len(named) > 1:
            raise TableFileError(f"{self.path}: no row for {file}, and the rows of volumes named {name} have "
                                 f"different labels ({', '.join(named)}): list the files with the paths the feature "
                                 "table has")
        return named[0] if named else None


def _normalised(file: str) -> str:
    return os.path.normpath(file.strip())


def read_labels(path: Union[str, Path]) -> LabelTable:
    """Read a ``file,label`` CSV; :meth:`LabelTable.label_of` matches its rows to feature-table files."""
    path = Path(path)
    if not path.is_file():
        raise TableFileError(f"{path}: labels file not found")
    text = _labels_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
        raise TableFileError(f"{path}: needs a header with the columns file,label")
    table = LabelTable(path, {}, {})
    for row in reader:
        file, label = (_cell(row, column, path, reader.line_num) for column in ("file", "label"))
        file = _normalised(file)
        if table.by_file.get(file, label) != label:
            raise TableFileError(f"{path}: {file} has two labels ({table.by_file[file]}, {label})")
        if file not in table.by_file:
            table.files_by_name.setdefault(volume_stem(file), []).append(file)
        table.by_file[file] = label
    if not table.by_file:
        raise TableFileError(f"{path}: no labelled rows under the file,label header")
    return table


def _delimiter(text: str) -> str:
    """The header's separator: a comma, or the semicolon (or tab) that spreadsheets write in locales where the
    comma is the decimal mark."""
    header = text.split("\n", 1)[0]
    return next((d for d in (";", "\t") if d in header and "," not in header), ",")


def labelled_features(table: FeatureTable, labels: LabelTable) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Volume rows with their labels: features (n, c), labels (n,) and file names; unlabelled files are an error."""
    volumes = table.volume_rows()
    if not volumes.files:
        raise TableFileError("the feature table has no volume rows (slice -1)")
    found = [labels.label_of(f) for f in volumes.files]
    missing = [f for f, label in zip(volumes.files, found) if label is None]
    if missing:
        raise TableFileError(f"{labels.path}: no label for {len(missing)} volume(s): {', '.join(missing[:5])}")
    return volumes.values, np.array(found), volumes.files


def _classifier(config: ClassifyConfig):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if config.classifier == "forest":
        return RandomForestClassifier(n_estimators=300, random_state=config.seed)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _metrics(y: np.ndarray, proba: np.ndarray) -> Tuple[float, float]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    accuracy = accuracy_score(y, proba.argmax(axis=1))
    if proba.shape[1] == 2:
        return accuracy, roc_auc_score(y, proba[:, 1])
    return accuracy, roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(proba.shape[1]))


def cross_validate(features: np.ndarray, labels: np.ndarray, config: ClassifyConfig) -> ClassificationReport:
    """Stratified k-fold out-of-fold predictions, their accuracy and AUROC, and bootstrap 95 % intervals."""
    try:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.preprocessing import LabelEncoder
        from sklearn.utils import resample
    except ImportError:
        raise ConfigurationError("classify needs scikit-learn: pip install 'MedAutoencoderLib[features]'") from None
    config.validate()
    encoder = LabelEncoder().fit(labels)
    y = encoder.transform(labels)
    counts = np.bincount(y)
    if len(counts) < 2:
        raise ConfigurationError(f"classification needs at least two labels; all volumes are labelled {labels[0]}")
    if counts.min() < config.folds:
        raise ConfigurationError(f"{config.folds}-fold cross-validation needs at least {config.folds} volumes per "
                                 f"label; the smallest label has {counts.min()} (lower --folds)")
    folds = StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
    proba = cross_val_predict(_classifier(config), features, y, cv=folds, method="predict_proba")
    accuracy, auroc = _metrics(y, proba)
    rng = np.random.RandomState(config.seed)
    index = np.arange(len(y))
    resampled = np.array([_metrics(y[i], proba[i]) for i in (
        resample(index, stratify=y, random_state=rng) for _ in range(config.bootstrap_resamples))])
    low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
    return ClassificationReport(
        classifier=config.classifier, folds=config.folds, n_volumes=len(y),
        class_counts={str(c): int(n) for c, n in zip(encoder.classes_, counts)},
        accuracy=float(accuracy), accuracy_ci=(float(low[0]), float(high[0])),
        auroc=float(auroc), auroc_ci=(float(low[1]), float(high[1])),
        ci_method=f"percentile, stratified bootstrap over out-of-fold predictions ({config.bootstrap_resamples} "
                  "resamples of the volumes)",
    )
