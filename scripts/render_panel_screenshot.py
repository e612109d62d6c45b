"""Render the module panel offscreen to ``Resources/Screenshots/panel.png`` (the extension's screenshot).

Run from the repository root: ``python scripts/render_panel_screenshot.py``. The panel is filled the way it
looks after a detection, with its result shown, with Qt stand-ins for Slicer's widgets (see
``Testing/offscreen_ui.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))

from offscreen_ui import ROOT, application, load_ui  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

SCREENSHOT = ROOT / "Resources/Screenshots/panel.png"
WIDTH = 440


def fill_like_a_finished_detection(panel: QtWidgets.QWidget) -> None:
    """Put the values a user sees after a detection into the panel: the result, its findings and the log."""
    from PySide6 import QtGui

    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QtWidgets.QComboBox, "inputVolumeSelector").addItems(["MRHead", "healthy_T1_01"])
    find(QtWidgets.QLineEdit, "modelPathLineEdit").setPlaceholderText("bundled default brain T1 model")
    find(QtWidgets.QComboBox, "deviceComboBox").addItems(["auto", "cpu", "gpu"])
    find(QtWidgets.QComboBox, "trainingSourceComboBox").addItems(["scene volumes", "folder"])
    find(QtWidgets.QComboBox, "trainingVolumesSelector").addItems(["healthy_T1_01, healthy_T1_02"])
    find(QtWidgets.QComboBox, "modelTypeComboBox").addItems(["dae", "ae", "sparse", "vae"])
    find(QtWidgets.QLineEdit, "outputModelLineEdit").setPlaceholderText("new file in MedAutoencoderModels")
    for name in ("trainingFolderLabel", "trainingFolderLineEdit", "resultStatusLabel"):
        panel.findChild(QtWidgets.QWidget, name).setVisible(False)
    find(QtWidgets.QPushButton, "detectButton").setEnabled(True)
    find(QtWidgets.QLabel, "resultModelValueLabel").setText("default_brain_t1.pt, contrast: \u2014")
    find(QtWidgets.QLabel, "resultScoreValueLabel").setText("0.6412")
    threshold = find(QtWidgets.QDoubleSpinBox, "resultThresholdSlider")
    threshold.setMaximum(2.0)
    threshold.setValue(0.3620)
    find(QtWidgets.QLabel, "resultThresholdSourceLabel").setText("your value; calibrated: 0.4009 (tick marks)")
    find(QtWidgets.QLabel, "resultFlaggedValueLabel").setText("7.84 mL in 3 finding(s)")
    rows = [("1", "5.213", "1.92", "0.71", "-24.3", "18.6", "31.0", ""),
            ("2", "1.906", "1.44", "0.58", "31.7", "-12.2", "22.5", ""),
            ("3", "0.721", "0.97", "0.49", "-8.4", "-40.1", "12.8", "")]
    model = QtGui.QStandardItemModel(len(rows), 8, panel)
    model.setHorizontalHeaderLabels(["Finding", "Volume", "Peak anomaly", "Mean anomaly", "R", "A", "S", "Region"])
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            model.setItem(r, c, QtGui.QStandardItem(value))
    table = find(QtWidgets.QTableView, "findingsTableView")
    table.setModel(model)
    table.resizeColumnsToContents()
    table.selectRow(0)
    table.setMinimumHeight(130)
    find(QtWidgets.QProgressBar, "progressBar").setValue(100)
    find(QtWidgets.QLabel, "timeLabel").setText("Elapsed: 3 s")
    find(QtWidgets.QPlainTextEdit, "logTextEdit").setPlainText(
        "detecting anomalies in 1 volume(s) on cpu\nMRHead: score 0.6412, 6.12 mL flagged\nDone: MRHead_reconstruction, "
        "MRHead_anomaly_map, MRHead_anomaly_mask, MRHead_anomaly_segmentation, MRHead_findings_table")


def main() -> int:
    app = application()
    panel = load_ui()
    fill_like_a_finished_detection(panel)
    panel.resize(WIDTH, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(SCREENSHOT), "PNG"):
        raise SystemExit(f"could not write {SCREENSHOT}")
    print(SCREENSHOT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
