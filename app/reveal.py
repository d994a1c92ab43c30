"""Show a file or folder in the platform's file manager, or say visibly why it cannot be."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QMessageBox, QWidget


def reveal_command(path: Path, platform: str | None = None) -> list[str] | None:
    """`open -R PATH` on macOS (selects it in Finder); None elsewhere (the folder is opened)."""
    if (platform or sys.platform) == "darwin":
        return ["open", "-R", str(path)]
    return None


def open_in_file_manager(path: Path) -> bool:
    """Reveal `path` (macOS) or open its folder; False when the platform has no launcher."""
    path = Path(path)
    cmd = reveal_command(path)
    if cmd:
        try:
            subprocess.Popen(cmd)  # noqa: S603 - fixed command, our own path
            return True
        except OSError:
            return False
    folder = path if path.is_dir() else path.parent
    return bool(QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))))


def reveal(path: Path, parent: QWidget | None = None) -> bool:
    """Reveal `path`; where nothing can open it, a message says so and offers its path to copy.
    Returns whether the file manager was asked to show it."""
    if open_in_file_manager(path):
        return True
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Information)
    box.setWindowTitle("Cannot open the folder")
    box.setText("This computer has no file manager that Lathe can ask to open the folder.")
    box.setInformativeText(f"It is here:\n{path}")
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    copy = box.addButton("Copy Path", QMessageBox.ButtonRole.ActionRole)
    box.addButton(QMessageBox.StandardButton.Ok)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(str(path)))
    box.open()
    return False
