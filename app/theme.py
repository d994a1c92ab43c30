"""Look and feel: the native style on macOS, Fusion elsewhere, colours from the system palette
(so light and dark mode follow the system), plus resources/style.qss; and the widgets that make
long names fit (middle elision with the whole text in the tooltip)."""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QLineEdit, QSizePolicy, QWidget

FUSION_MARKER = "/* @fusion */"


def _rgba(color: QColor, alpha: float) -> str:
    return f"rgba({color.red()}, {color.green()}, {color.blue()}, {alpha:.2f})"


def palette_tokens(palette: QPalette) -> dict[str, str]:
    """The @name@ colours of style.qss, derived from `palette` (light or dark)."""
    role = QPalette.ColorRole
    window, text = palette.color(role.Window), palette.color(role.WindowText)
    button, accent = palette.color(role.Button), palette.color(role.Highlight)
    dark = window.lightness() < 128
    return {
        "accent": accent.name(),
        "accent_hover": accent.lighter(112).name(),
        "accent_pressed": accent.darker(118).name(),
        "separator": _rgba(text, 0.20 if dark else 0.16),
        "bezel": _rgba(text, 0.28 if dark else 0.22),
        "bezel_dark": _rgba(text, 0.40 if dark else 0.34),
        "button_top": button.lighter(125 if dark else 106).name(),
        "button_hover_top": button.lighter(140 if dark else 110).name(),
        "button_hover": button.lighter(115 if dark else 103).name(),
        "button_pressed": button.darker(115 if dark else 112).name(),
        "disabled_fill": _rgba(text, 0.06 if dark else 0.04),
        "hover_fill": _rgba(text, 0.12),
        "link": accent.darker(108).name() if not dark else accent.lighter(130).name(),
        "danger": "#ff6961" if dark else "#c9302c",
    }


def style_sheet(palette: QPalette, platform: str | None = None) -> str:
    """resources/style.qss for this platform and palette: macOS gets the shared rules only, so
    its native controls show through; elsewhere the Fusion rules (buttons, tables) follow."""
    try:
        from engine.workspace import resources_dir

        qss = (resources_dir() / "style.qss").read_text(encoding="utf-8")
    except OSError:
        return ""
    if (platform or sys.platform) == "darwin":
        qss = qss.split(FUSION_MARKER, 1)[0]
    for name, value in palette_tokens(palette).items():
        qss = qss.replace(f"@{name}@", value)
    return qss


def native_primary_buttons(root: QWidget, platform: str | None = None) -> int:
    """macOS: draw each view's primary button (objectName "primary") as the native default button
    (the accent-coloured one), since the style sheet leaves buttons to the native style there.
    Returns how many buttons were marked."""
    if (platform or sys.platform) != "darwin":
        return 0
    from PySide6.QtWidgets import QPushButton

    buttons = root.findChildren(QPushButton, "primary")
    for button in buttons:
        button.setDefault(True)
    return len(buttons)


def apply_theme(app: QApplication) -> None:
    """The native style on macOS, Fusion elsewhere, and the style sheet for the current palette.
    Called again when the system switches between light and dark."""
    if sys.platform != "darwin":
        if app.style().name().lower() != "fusion":
            app.setStyle("Fusion")
        # Links in labels ("Choose a model…") in the accent colour, not Fusion's pure blue.
        palette = app.palette()
        link = palette_tokens(palette)["link"]
        if palette.color(QPalette.ColorRole.Link).name() != link:
            palette.setColor(QPalette.ColorRole.Link, QColor(link))
            app.setPalette(palette)
    app.setStyleSheet(style_sheet(app.palette()))
    # Follow the system's light/dark setting where Qt reports it (Qt 6.5+).
    hints = app.styleHints()
    if hasattr(hints, "colorSchemeChanged") and not getattr(app, "_lathe_scheme_hooked", False):
        app._lathe_scheme_hooked = True
        hints.colorSchemeChanged.connect(lambda _scheme: apply_theme(app))


# ---------------------------------------------------------------------------------------------
# Names that fit: paths middle-elided, the whole text in the tooltip (app.names makes the names)


def elide_middle(text: str, metrics: QFontMetrics, width: int) -> str:
    """`text` cut in the middle to fit `width` pixels. A path keeps its last part whole when
    there is room for it (`/work/en…/stories260K`), so the name is never the part that goes."""
    width = max(0, int(width))
    if metrics.horizontalAdvance(text) <= width:
        return text
    cut = text.rstrip("/").rfind("/")
    if cut > 0:
        tail = text[cut:]
        room = width - metrics.horizontalAdvance(tail)
        if room >= metrics.horizontalAdvance("/w…"):
            return metrics.elidedText(text[:cut], Qt.TextElideMode.ElideRight, room) + tail
    return metrics.elidedText(text, Qt.TextElideMode.ElideMiddle, width)


class ElidedLabel(QLabel):
    """A one-line label that elides its text to fit and keeps the whole text in its tooltip:
    in the middle for paths (`/Users/me/…/bank-support`), at the end for titles (`mode`)."""

    def __init__(
        self,
        text: str = "",
        parent: QWidget | None = None,
        mode: Qt.TextElideMode = Qt.TextElideMode.ElideMiddle,
    ):
        super().__init__(parent)
        self.mode = mode
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
        width = max(0, self.contentsRect().width())
        if self.mode == Qt.TextElideMode.ElideMiddle:
            super().setText(elide_middle(self._full, self.fontMetrics(), width))
        else:
            super().setText(self.fontMetrics().elidedText(self._full, self.mode, width))


class NameLineEdit(QLineEdit):
    """The line edit of an editable path combo box: while it is not being edited it shows the
    human name of the path it holds (`stories260K  —  /work/…/models/stories260K`), middle-elided;
    editing shows the path itself. The text (what the form reads) is always the path."""

    def __init__(self, namer, parent: QWidget | None = None):
        super().__init__(parent)
        self.namer = namer

    def display_text(self, width: int | None = None) -> str:
        """`name  —  path` with the path middle-elided to fit `width` pixels (the name stays
        whole); only the name when there is no room for a useful part of the path."""
        path = self.text().strip()
        if not path:
            return ""
        name = self.namer(path)
        if not name or name == path:
            return path if width is None else elide_middle(path, self.fontMetrics(), width)
        head = f"{name}  —  "
        if width is None:
            return head + path
        metrics = self.fontMetrics()
        room = width - metrics.horizontalAdvance(head)
        if room < metrics.horizontalAdvance(f"/…/{name}"):
            return elide_middle(name, metrics, width)
        return head + elide_middle(path, metrics, room)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.hasFocus() or not self.text().strip():
            super().paintEvent(event)
            return
        p = QPainter(self)
        rect = self.contentsRect().adjusted(2 + self.textMargins().left(), 0, -2, 0)
        role = QPalette.ColorRole.Text
        group = QPalette.ColorGroup.Active if self.isEnabled() else QPalette.ColorGroup.Disabled
        p.setPen(self.palette().color(group, role))
        text = self.display_text(rect.width())
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
