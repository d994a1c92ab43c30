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
    # Follow the system's light/dark setting where Qt reports it (Qt 6.5+); the palette roles in
    # the style sheet and the charts pick the new colours up.
    hints = app.styleHints()
    if hasattr(hints, "colorSchemeChanged") and not getattr(app, "_lathe_scheme_hooked", False):
        app._lathe_scheme_hooked = True
        hints.colorSchemeChanged.connect(lambda _scheme: app.setStyleSheet(app.styleSheet()))
