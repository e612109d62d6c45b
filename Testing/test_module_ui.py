"""The module's .ui loads offscreen and has every widget the module's code uses."""
from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is needed to load the .ui offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from offscreen_ui import MODULE_UI, QT_STAND_INS, ROOT, application, load_ui, qt_only_ui_text  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

MODULE_FILE = ROOT / "MedAutoencoder/MedAutoencoder.py"


@pytest.fixture(scope="module")
def panel():
    app = application()
    widget = load_ui()
    yield widget
    widget.deleteLater()
    app.processEvents()


def ui_names_used_by_module() -> set:
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))


def test_every_widget_class_is_qt_or_has_a_stand_in():
    classes = {w.get("class") for w in ET.parse(MODULE_UI).getroot().iter("widget")}
    unknown = {c for c in classes if c not in QT_STAND_INS and not hasattr(QtWidgets, c)}
    assert not unknown


def test_qt_only_copy_has_no_slicer_classes():
    text = qt_only_ui_text()
    assert not re.search(r'class="(qMRML|qSlicer|ctk)', text)


def test_ui_loads_offscreen(panel):
    assert panel.objectName() == "MedAutoencoder"
    assert panel.findChild(QtWidgets.QPushButton, "detectButton").text() == "Detect anomalies"
    assert panel.findChild(QtWidgets.QPushButton, "trainButton").text() == "Train model"


def test_every_widget_the_module_uses_exists(panel):
    missing = [name for name in ui_names_used_by_module() if panel.findChild(QtWidgets.QWidget, name) is None]
    assert not missing


def test_sections_for_detection_training_and_progress(panel):
    titles = [box.title() for box in panel.findChildren(QtWidgets.QGroupBox)]
    assert titles == ["Detect anomalies", "Results", "Train", "Progress"]


RESULT_WIDGETS = {  # name: (class in the .ui, class offscreen)
    "resultModelValueLabel": ("QLabel", QtWidgets.QLabel),
    "resultScoreValueLabel": ("QLabel", QtWidgets.QLabel),
    "resultFlaggedValueLabel": ("QLabel", QtWidgets.QLabel),
    "resultThresholdSlider": ("ctkSliderWidget", QtWidgets.QDoubleSpinBox),
    "resetThresholdButton": ("QPushButton", QtWidgets.QPushButton),
    "findingsTableView": ("qMRMLTableView", QtWidgets.QTableView),
    "overlayOpacitySlider": ("ctkSliderWidget", QtWidgets.QDoubleSpinBox),
    "showLinkedViewsButton": ("QPushButton", QtWidgets.QPushButton),
    "restoreLayoutButton": ("QPushButton", QtWidgets.QPushButton),
    "saveReportButton": ("QPushButton", QtWidgets.QPushButton),
}


def test_results_section_has_slicers_own_widgets(panel):
    """Slicer's table view and CTK sliders in the .ui; offscreen they load as their Qt stand-ins."""
    in_ui = {w.get("name"): w for w in ET.parse(MODULE_UI).getroot().iter("widget")}
    results = panel.findChild(QtWidgets.QGroupBox, "resultsCollapsibleButton")
    for name, (ui_class, offscreen_class) in RESULT_WIDGETS.items():
        assert in_ui[name].get("class") == ui_class
        assert isinstance(results.findChild(offscreen_class, name), offscreen_class), name
    slider = in_ui["resultThresholdSlider"]
    assert slider.find("property[@name='tickPosition']/enum").text == "QSlider::TicksBelow"  # calibrated mark
    assert results.findChild(QtWidgets.QDoubleSpinBox, "overlayOpacitySlider").value() == pytest.approx(0.4)
    assert [results.findChild(QtWidgets.QPushButton, n).text() for n in
            ("showLinkedViewsButton", "restoreLayoutButton", "saveReportButton", "resetThresholdButton")] == \
        ["Show linked views", "Restore layout", "Save report...", "Reset"]


def test_threshold_value_follows_automatic_checkbox(panel):
    automatic = panel.findChild(QtWidgets.QCheckBox, "thresholdAutoCheckBox")
    value = panel.findChild(QtWidgets.QDoubleSpinBox, "thresholdSpinBox")
    assert automatic.isChecked() and not value.isEnabled()
    automatic.setChecked(False)
    assert value.isEnabled()
    automatic.setChecked(True)
    assert not value.isEnabled()


def test_panel_screenshot_is_committed():
    screenshot = ROOT / "Resources/Screenshots/panel.png"
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 300 and height >= 400
