"""Look and feel: the native style on macOS, Fusion elsewhere, colours from the system palette
(so light and dark mode follow the system), plus resources/style.qss."""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QLineEdit, QSizePolicy, QWidget


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


# ---------------------------------------------------------------------------------------------
# Names that fit: paths middle-elided, the whole text in the tooltip (app.names makes the names)


def elide_middle(text: str, metrics: QFontMetrics, width: int) -> str:
    """`text` cut in the middle to fit `width` pixels (`/Users/me/…/stories260K`)."""
    return metrics.elidedText(text, Qt.TextElideMode.ElideMiddle, max(0, int(width)))


class ElidedLabel(QLabel):
    """A one-line label that middle-elides its text to fit and keeps the whole text in its
    tooltip (paths: `/Users/me/…/bank-support`)."""

    def __init__(self, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self._full = ""
        self.setMinimumWidth(40)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.set_full_text(text)

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str, tooltip: str | None = None) -> None:
        self._full = text or ""
        self.setToolTip(tooltip if tooltip is not None else self._full)
        self._elide()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        super().setText(elide_middle(self._full, self.fontMetrics(), self.contentsRect().width()))


class NameLineEdit(QLineEdit):
    """The line edit of an editable path combo box: while it is not being edited it shows the
    human name of the path it holds (`stories260K  —  /work/…/models/stories260K`), middle-elided;
    editing shows the path itself. The text (what the form reads) is always the path."""

    def __init__(self, namer, parent: QWidget | None = None):
        super().__init__(parent)
        self.namer = namer

    def display_text(self) -> str:
        path = self.text().strip()
        if not path:
            return ""
        name = self.namer(path)
        return f"{name}  —  {path}" if name and name != path else path

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.hasFocus() or not self.text().strip():
            super().paintEvent(event)
            return
        p = QPainter(self)
        rect = self.contentsRect().adjusted(2 + self.textMargins().left(), 0, -2, 0)
        role = QPalette.ColorRole.Text
        group = QPalette.ColorGroup.Active if self.isEnabled() else QPalette.ColorGroup.Disabled
        p.setPen(self.palette().color(group, role))
        text = elide_middle(self.display_text(), self.fontMetrics(), rect.width())
        p.drawText(rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, text)
        p.end()


def show_names(combo: QComboBox, namer) -> NameLineEdit:
    """Make an editable combo box show human names: its field shows `namer(path)` with the path
    middle-elided (the whole path in the tooltip), and its popup is wide enough for whole labels."""
    edit = NameLineEdit(namer)
    placeholder = combo.lineEdit().placeholderText() if combo.lineEdit() else ""
    combo.setLineEdit(edit)
    edit.setPlaceholderText(placeholder)
    edit.textChanged.connect(lambda text: edit.setToolTip(text or combo.toolTip()))
    combo.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
    return edit


def fit_popup(combo: QComboBox, limit: int = 720) -> None:
    """Widen a combo box's popup to its longest item (up to `limit` px), so names are whole."""
    metrics = combo.view().fontMetrics()
    widest = max(
        (metrics.horizontalAdvance(combo.itemText(i)) for i in range(combo.count())), default=0
    )
    combo.view().setMinimumWidth(min(limit, widest + 48))
