"""Render the module panel offscreen to ``Resources/Screenshots/panel.png`` (the extension's screenshot).

Run from the repository root: ``python scripts/render_panel_screenshot.py``. The panel is filled the way it
looks while a detection runs, with Qt stand-ins for Slicer's widgets (see ``Testing/offscreen_ui.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))

from offscreen_ui import ROOT, application, load_ui  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

SCREENSHOT = ROOT / "Resources/Screenshots/panel.png"
WIDTH = 440


def fill_like_a_running_detection(panel: QtWidgets.QWidget) -> None:
    """Put the values a user sees while a detection runs into the panel."""
    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QtWidgets.QComboBox, "inputVolumeSelector").addItems(["MRHead", "healthy_T1_01"])
    find(QtWidgets.QLineEdit, "modelPathLineEdit").setPlaceholderText("bundled default brain T1 model")
    find(QtWidgets.QComboBox, "deviceComboBox").addItems(["auto", "cpu", "gpu"])
    find(QtWidgets.QComboBox, "trainingSourceComboBox").addItems(["scene volumes", "folder"])
    find(QtWidgets.QComboBox, "trainingVolumesSelector").addItems(["healthy_T1_01, healthy_T1_02"])
    find(QtWidgets.QComboBox, "modelTypeComboBox").addItems(["dae", "ae", "sparse", "vae"])
    find(QtWidgets.QLineEdit, "outputModelLineEdit").setPlaceholderText("new file in MedAutoencoderModels")
    for name in ("trainingFolderLabel", "trainingFolderLineEdit"):
        panel.findChild(QtWidgets.QWidget, name).setVisible(False)
    detect = find(QtWidgets.QPushButton, "detectButton")
    detect.setText("Cancel")
    detect.setEnabled(True)
    find(QtWidgets.QProgressBar, "progressBar").setValue(62)
    find(QtWidgets.QLabel, "timeLabel").setText("Elapsed: 14 s, remaining: about 9 s")
    find(QtWidgets.QPlainTextEdit, "logTextEdit").setPlainText(
        "detecting anomalies in 1 volume(s) on cpu\ninput.nrrd (1/1)")


def main() -> int:
    app = application()
    panel = load_ui()
    fill_like_a_running_detection(panel)
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
