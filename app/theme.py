"""Look and feel: the native style on macOS, Fusion elsewhere, colours from the system palette
(so light and dark mode follow the system), plus resources/style.qss."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication


def apply_theme(app: QApplication) -> None:
    if sys.platform != "darwin":
        app.setStyle("Fusion")
    try:
        from engine.workspace import resources_dir

        qss = (resources_dir() / "style.qss").read_text(encoding="utf-8")
    except OSError:
        qss = ""
    app.setStyleSheet(qss)
