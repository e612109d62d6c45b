"""Latent features and the downstream classifier: ``features`` and ``classify`` as users run them (in-process
``cli.main``), on a tiny trained VAE and two groups of toy volumes that differ in organ size."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import toy

from MedAutoencoderLib.analysis.classification import ClassifyConfig, cross_validate, labelled_features, read_labels
from MedAutoencoderLib.analysis.features import VOLUME_ROW, FeatureTable, read_features, write_features
from MedAutoencoderLib.cli.commands import main
from MedAutoencoderLib.errors import ConfigurationError

PER_GROUP = 4


@pytest.fixture(scope="module")
def labelled_cohort(tmp_path_factory):
    """Four small and four large toy organs (same voxels, spacing 1.0 vs 1.5 mm) and a labels CSV."""
    root = tmp_path_factory.mktemp("labelled")
    rows = []
    for i in range(2 * PER_GROUP):
        label = "large" if i % 2 else "small"
        name = f"subject_{i:02d}.nii.gz"
        sitk.WriteImage(toy(100 + i, spacing=(1.5,) * 3 if label == "large" else (1.0,) * 3), str(root / name))
        rows.append((name, label))
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "label"), *rows])
    return {"folder": root, "labels": labels}


@pytest.fixture(scope="module")
def feature_csv(vae_model_path, labelled_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "features.csv"
    assert main(["features", str(labelled_cohort["folder"]), "--model", str(vae_model_path), "--out", str(out),
                 "--per-slice", "--format", "csv", "--device", "cpu"]) == 0
    return out


def test_volume_rows_are_the_mean_of_their_slice_rows(feature_csv, labelled_cohort):
    table = read_features(feature_csv)
    volumes = table.volume_rows()
    assert len(volumes.files) == 2 * PER_GROUP
    assert table.values.shape[1] == 4  # latent_channels: fixed width whatever the grid
    assert np.isfinite(table.values).all()
    for name, row in zip(volumes.files, volumes.values):
        slices = [i for i, f in enumerate(table.files) if f == name and table.slices[i] != VOLUME_ROW]
        assert len(slices) > 5 and all(0 <= table.slices[i] < 32 for i in slices)
        np.testing.assert_allclose(row, table.values[slices].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_npy_table_round_trips_without_pickle(feature_csv, tmp_path):
    table = read_features(feature_csv)
    path = write_features(table, tmp_path / "features.npy")
    again = read_features(path)
    assert again.files == table.files
    np.testing.assert_array_equal(again.slices, table.slices)
    np.testing.assert_allclose(again.values, table.values, rtol=1e-6)


@pytest.mark.slow
def test_classify_reports_intervals_and_writes_the_latent_plot(feature_csv, labelled_cohort, tmp_path, capsys):
    plot = tmp_path / "latent.png"
    assert main(["classify", "--features", str(feature_csv), "--labels", str(labelled_cohort["labels"]),
                 "--folds", "2", "--bootstrap", "200", "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "AUROC" in printed and "95% CI" in printed
    assert "bootstrap over out-of-fold predictions" in printed
    picture = sitk.ReadImage(str(plot))
    assert picture.GetSize()[0] > 300 and picture.GetNumberOfComponentsPerPixel() >= 3

    features, labels, _ = labelled_features(read_features(feature_csv), read_labels(labelled_cohort["labels"]))
    for classifier in ("logreg", "forest"):
        report = cross_validate(features, labels, ClassifyConfig(classifier=classifier, folds=2,
                                                                 bootstrap_resamples=200))
        assert report.class_counts == {"large": PER_GROUP, "small": PER_GROUP}
        assert report.auroc >= 0.9, report.format()  # organ size is plain in the pooled codes
        assert report.accuracy_ci[0] <= report.accuracy <= report.accuracy_ci[1] <= 1.0
        assert report.auroc_ci[0] <= report.auroc <= report.auroc_ci[1] <= 1.0


def test_classify_names_unlabelled_volumes(feature_csv, tmp_path, capsys):
    labels = tmp_path / "partial.csv"
    labels.write_text("file,label\nsubject_00.nii.gz,small\n")
    assert main(["classify", "--features", str(feature_csv), "--labels", str(labels)]) == 1
    assert "no label for 7 volume(s)" in capsys.readouterr().err


def test_classify_plot_never_replaces_the_tables_and_refuses_an_existing_file(feature_csv, labelled_cohort,
                                                                              tmp_path, capsys):
    table_bytes = feature_csv.read_bytes()
    for target in (feature_csv, labelled_cohort["labels"]):
        assert main(["classify", "--features", str(feature_csv), "--labels", str(labelled_cohort["labels"]),
                     "--plot", str(target), "--overwrite"]) == 1
        assert "overwrite an input" in capsys.readouterr().err
    assert feature_csv.read_bytes() == table_bytes
    existing = tmp_path / "old.png"
    existing.write_bytes(b"my own picture")
    assert main(["classify", "--features", str(feature_csv), "--labels", str(labelled_cohort["labels"]),
                 "--plot", str(existing)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err and existing.read_bytes() == b"my own picture"


def test_features_checks_its_output_before_encoding_and_never_replaces_an_input(vae_model_path, labelled_cohort,
                                                                                  tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes((labelled_cohort["folder"] / "subject_00.nii.gz").read_bytes())
    model = tmp_path / "vae.pt"
    model.write_bytes(vae_model_path.read_bytes())
    for out, fmt in ((scan, "csv"), (model, "npy")):
        assert main(["features", str(scan), "--model", str(model), "--out", str(out), "--format", fmt,
                     "--overwrite", "--device", "cpu"]) == 1
        assert "overwrite an input" in capsys.readouterr().err
    assert scan.read_bytes() == (labelled_cohort["folder"] / "subject_00.nii.gz").read_bytes()
    assert model.read_bytes() == vae_model_path.read_bytes()
    assert main(["features", str(scan), "--model", str(model), "--out", str(tmp_path / "f.csv"), "--format",
                 "npy", "--device", "cpu"]) == 1
    assert "the name says csv but the format asked for is npy" in capsys.readouterr().err


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252"])
@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_labels_saved_by_excel_are_read(tmp_path, encoding, separator):
    """Excel's "CSV UTF-8" starts with a byte-order mark; its plain "CSV" on Windows is Windows-1252; where the
    comma is the decimal mark it separates with semicolons."""
    labels = tmp_path / "labels.csv"
    rows = ["file,label", "s0.nii.gz,ok", "s1.nii.gz,lésion"]
    labels.write_bytes("\r\n".join(row.replace(",", separator) for row in rows).encode(encoding) + b"\r\n")
    assert read_labels(labels).by_file == {"s0.nii.gz": "ok", "s1.nii.gz": "lésion"}


@pytest.mark.parametrize("content, message", [
    (b"file,label\ns0.nii.gz,ok\ns1.nii.gz\n", "rows.csv, line 3: no label"),
    (b"file,label\ns0.nii.gz,\n", "rows.csv, line 2: no label"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "rows.csv: not a text CSV file; --labels needs a file,label CSV"),
])
def test_unusable_labels_rows_name_the_file_and_line(feature_csv, tmp_path, capsys, content, message):
    labels = tmp_path / "rows.csv"
    labels.write_bytes(content)
    assert main(["classify", "--features", str(feature_csv), "--labels", str(labels)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_image_given_as_labels_is_named(feature_csv, labelled_cohort, capsys):
    image = labelled_cohort["folder"] / "subject_00.nii.gz"
    assert main(["classify", "--features", str(feature_csv), "--labels", str(image)]) == 1
    assert "subject_00.nii.gz: an image volume; --labels needs a file,label CSV table" in capsys.readouterr().err


def write_volume_table(path, files):
    """A feature table of volume rows (as ``features`` writes it) with two features that separate two groups."""
    values = np.array([[i % 2, 0.1 * i] for i in range(len(files))], dtype=np.float32)
    return write_features(FeatureTable(list(files), np.full(len(files), VOLUME_ROW), values), path)


def write_two_group_labels(path, files):
    """``file,label`` rows alternating ok, les: the groups :func:`write_volume_table` separates."""
    path.write_text("file,label\n" + "".join(f"{f},{'les' if i % 2 else 'ok'}\n" for i, f in enumerate(files)))
    return path


def test_labels_match_paths_of_a_cohort_with_one_folder_per_subject(tmp_path, capsys):
    files = [f"bids/sub-{i}/anat/T1w.nii.gz" for i in range(4)]
    features = write_volume_table(tmp_path / "features.csv", files)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"./{f},{'les' if i % 2 else 'ok'}\n" for i, f in enumerate(files)))
    assert main(["classify", "--features", str(features), "--labels", str(labels), "--folds", "2",
                 "--bootstrap", "20"]) == 0
    assert "(les: 2, ok: 2)" in capsys.readouterr().out

    labels.write_text("file,label\n" + "".join(f"sub-{i}/T1w.nii.gz,{'les' if i % 2 else 'ok'}\n" for i in range(4)))
    assert main(["classify", "--features", str(features), "--labels", str(labels)]) == 1
    assert "rows of volumes named T1w have different labels (les, ok)" in capsys.readouterr().err


def test_labels_of_unique_names_match_files_in_folders(tmp_path, capsys):
    features = write_volume_table(tmp_path / "features.csv", [f"cohort/s{i}.nii.gz" for i in range(4)])
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"s{i}.nii.gz,ok\n" for i in range(4)))
    assert main(["classify", "--features", str(features), "--labels", str(labels)]) == 1
    assert "error: classification needs at least two labels; all volumes are labelled ok\n" in capsys.readouterr().err


@pytest.mark.parametrize("resamples", ["0", "-5"])
def test_classify_refuses_fewer_than_one_bootstrap_resample(tmp_path, capsys, resamples):
    files = [f"s{i}.nii.gz" for i in range(4)]
    features = write_volume_table(tmp_path / "features.csv", files)
    labels = write_two_group_labels(tmp_path / "labels.csv", files)
    assert main(["classify", "--features", str(features), "--labels", str(labels), "--folds", "2",
                 "--bootstrap", resamples]) == 1
    assert f"error: bootstrap resamples must be at least 1 (the intervals are percentiles of them), got {resamples}" \
        in capsys.readouterr().err


def test_a_npy_table_is_read_whatever_its_name(tmp_path):
    """A .npy table renamed (or written under another suffix: ``--out x.table --format npy``) is still read."""
    path = write_volume_table(tmp_path / "features.csv", ["a.nii.gz", "b.nii.gz"])
    renamed = write_features(read_features(path), tmp_path / "npy_bytes.npy").rename(tmp_path / "npy_bytes.csv")
    table = read_features(renamed)
    assert table.files == ["a.nii.gz", "b.nii.gz"] and table.values.shape == (2, 2)
    with pytest.raises(ConfigurationError, match="the name says csv but the format asked for is npy"):
        write_features(table, tmp_path / "other.csv", "npy")


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 4)), "plain.npy: not a feature table (a plain float64 array of shape (3, 4)); expected what the "
                       "features command writes"),
    (np.array([{"file": "a"}], dtype=object), "plain.npy: not a feature table (a .npy of Python objects)"),
])
def test_classify_names_a_npy_that_is_not_a_feature_table(tmp_path, capsys, array, message):
    np.save(tmp_path / "plain.npy", array, allow_pickle=True)
    labels = write_two_group_labels(tmp_path / "labels.csv", ["a.nii.gz"])
    assert main(["classify", "--features", str(tmp_path / "plain.npy"), "--labels", str(labels)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_classify_names_the_line_of_a_missing_feature_value(tmp_path, capsys):
    files = [f"s{i}.nii.gz" for i in range(4)]
    features = write_volume_table(tmp_path / "features.csv", files)
    lines = features.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:-1] + ["nan"])
    features.write_text("\n".join(lines) + "\n")
    labels = write_two_group_labels(tmp_path / "labels.csv", files)
    assert main(["classify", "--features", str(features), "--labels", str(labels), "--folds", "2"]) == 1
    assert "features.csv, line 4 (s2.nii.gz): feature values must be finite numbers, not nan" in capsys.readouterr().err
