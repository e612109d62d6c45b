"""Draw the extension and module icon (128 x 128 PNG) offscreen with Qt.

Run from the repository root: ``python scripts/render_icons.py``. The picture: an axial head slice in grey
with one warm anomaly spot and its red outline, the module's result at a glance.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPointF, QRectF, Qt  # noqa: E402
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QImage, QPainter, QPen, QRadialGradient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ICON_PATHS = (ROOT / "Resources/Icons/MedAutoencoder.png", ROOT / "MedAutoencoder/Resources/Icons/MedAutoencoder.png")
SIZE = 128


def draw_icon() -> QImage:
    """The icon on a transparent background."""
    image = QImage(SIZE, SIZE, QImage.Format_ARGB32)
    image.fill(Qt.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)

    painter.setPen(Qt.NoPen)
    painter.setBrush(QColor("#1f3b57"))
    painter.drawRoundedRect(QRectF(4, 4, 120, 120), 22, 22)

    head = QRadialGradient(QPointF(64, 60), 52)
    head.setColorAt(0.0, QColor("#d9dde2"))
    head.setColorAt(1.0, QColor("#8d96a0"))
    painter.setBrush(QBrush(head))
    painter.setPen(QPen(QColor("#f4f6f8"), 4))
    painter.drawEllipse(QRectF(22, 14, 84, 100))

    painter.setPen(QPen(QColor("#6f7984"), 3))
    painter.drawLine(QPointF(64, 24), QPointF(64, 104))

    spot = QRadialGradient(QPointF(82, 50), 17)
    spot.setColorAt(0.0, QColor("#fff176"))
    spot.setColorAt(0.55, QColor("#ff9800"))
    spot.setColorAt(1.0, QColor(255, 87, 34, 0))
    painter.setPen(Qt.NoPen)
    painter.setBrush(QBrush(spot))
    painter.drawEllipse(QPointF(82, 50), 17, 17)
    painter.setBrush(Qt.NoBrush)
    painter.setPen(QPen(QColor("#e53935"), 3))
    painter.drawEllipse(QPointF(82, 50), 13, 11)
    painter.end()
    return image


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    image = draw_icon()
    for path in ICON_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not image.save(str(path), "PNG"):
            raise SystemExit(f"could not write {path}")
        print(path.relative_to(ROOT))
    del app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
