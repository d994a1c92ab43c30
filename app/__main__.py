"""`python -m app` / `lathe`: start the desktop app."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(sys.argv if argv is None else ["lathe", *argv])
    label = QLabel("Lathe: the desktop window arrives with the GUI issue.\n"
                   "Use `python -m engine --help` meanwhile.")
    label.setMargin(40)
    label.setWindowTitle("Lathe")
    label.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
