"""Load the module's Qt Designer file without Slicer, for tests and for the panel screenshot.

Slicer's custom widgets (qMRML*, ctk*) do not exist in a plain Qt, so a temporary copy of the .ui is made in
which each of them becomes the Qt class it behaves like, and properties the Qt class lacks are dropped.
"""
from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtWidgets  # noqa: E402
from PySide6.QtCore import QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODULE_UI = ROOT / "MedAutoencoder/Resources/UI/MedAutoencoder.ui"

#: Slicer / CTK widget -> the Qt widget standing in for it offscreen.
QT_STAND_INS = {
    "qMRMLWidget": "QWidget",
    "qSlicerWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",
    "ctkCollapsibleGroupBox": "QGroupBox",
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLCheckableNodeComboBox": "QComboBox",
    "qMRMLSubjectHierarchyComboBox": "QComboBox",
    "ctkComboBox": "QComboBox",
    "ctkPathLineEdit": "QLineEdit",
    "ctkDirectoryButton": "QPushButton",
    "ctkSliderWidget": "QDoubleSpinBox",
    "qMRMLSliderWidget": "QDoubleSpinBox",
    "ctkDoubleSpinBox": "QDoubleSpinBox",
    "qMRMLSpinBox": "QDoubleSpinBox",
    "ctkCheckBox": "QCheckBox",
    "ctkCheckablePushButton": "QPushButton",
    "ctkMenuButton": "QPushButton",
    "qMRMLTableView": "QTableView",
}
#: Properties renamed for the stand-in (a collapsible button's text is a group box's title).
RENAMED_PROPERTIES = {("QGroupBox", "text"): "title"}


def _qt_property_names(class_name: str) -> set:
    """Names of the properties of a Qt widget class, read from a throwaway instance's meta-object."""
    application()  # widgets need one
    meta = getattr(QtWidgets, class_name)().metaObject()
    return {meta.property(i).name() for i in range(meta.propertyCount())}


def qt_only_ui_text(ui_path: Path = MODULE_UI) -> str:
    """The .ui file with every Slicer/CTK widget replaced by its Qt stand-in."""
    tree = ET.parse(ui_path)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        stand_in = QT_STAND_INS.get(original)
        if stand_in is None:
            continue
        widget.set("class", stand_in)
        known = _qt_property_names(stand_in)
        for prop in list(widget.findall("property")):
            name = RENAMED_PROPERTIES.get((stand_in, prop.get("name")), prop.get("name"))
            prop.set("name", name)
            if name not in known and prop.get("stdset") != "0":
                widget.remove(prop)
    for section in ("customwidgets", "connections"):
        element = root.find(section)
        if element is not None:
            kept = [c for c in element if "vtkMRMLScene" not in ET.tostring(c, encoding="unicode")]
            for child in list(element):
                if child not in kept:
                    element.remove(child)
    return ET.tostring(root, encoding="unicode")


def load_ui(ui_path: Path = MODULE_UI) -> QtWidgets.QWidget:
    """The panel built by QUiLoader from the Qt-only copy of the .ui (needs a QApplication)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ui_path.name
        path.write_text(qt_only_ui_text(ui_path), encoding="utf-8")
        ui_file = QFile(str(path))
        ui_file.open(QFile.ReadOnly)
        loader = QUiLoader()
        widget = loader.load(ui_file)
        ui_file.close()
        if widget is None:
            raise RuntimeError(f"QUiLoader could not load {ui_path}: {loader.errorString()}")
        return widget


def application() -> QtWidgets.QApplication:
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
