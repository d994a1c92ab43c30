"""`python -m app` / `lathe`: start the desktop app.

Startup stays light: PySide6, the app's modules and small engine modules (config, workspace).
MLX, mlx-lm and the training code load only in worker threads or in the training process.

    python -m app                          open the window
    python -m app --screenshot PAGE FILE   render a page offscreen with demo data and exit
"""

from __future__ import annotations

import argparse
import os
import sys
import time

T0 = time.time()


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lathe", description="Lathe: fine-tune language models on your Mac."
    )
    p.add_argument(
        "--screenshot",
        nargs=2,
        metavar=("PAGE", "FILE"),
        help="Render PAGE (welcome, models, data, train, runs, chat) with demo data to FILE.png.",
    )
    p.add_argument(
        "--probe-startup",
        action="store_true",
        help="Print when the window is shown, then quit (bench/gui_responsiveness.py).",
    )
    p.add_argument("paths", nargs="*", help="Dataset files or model folders to open.")
    return p.parse_args(argv)


def _finish(code: int, from_command_line: bool) -> int:
    """Exit code of the app; ends the process directly when MLX has been used.

    MLX 0.32 crashes at interpreter exit after running on a worker thread (the chat and evaluation
    workers do): its per-thread compile cache is destroyed after Python is finalised. Everything
    is saved by now (windows closed, runs stopped), so skip those destructors.
    """
    if from_command_line and "mlx.core" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    return _finish(code, argv is None)


def _main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.screenshot:
        from app.screenshot import render

        return render(*args.screenshot)

    _tidy_in_background()
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["lathe"])
    app.setApplicationName("Lathe")
    app.setOrganizationName("Lathe")
    app.setApplicationDisplayName("Lathe")
    from app.theme import apply_theme
    from app.window import FileOpenFilter, MainWindow, app_preference, icon_path

    apply_theme(app)
    app.setWindowIcon(QIcon(str(icon_path())))
    window = MainWindow()
    window.controller.keep_awake = app_preference("keep_awake")
    app.installEventFilter(FileOpenFilter(window))
    window.show()
    if args.probe_startup:

        def shown():
            print(f"window_shown_at={time.time():.4f} import_started_at={T0:.4f}", flush=True)
            window.quit_confirmed = True
            window.remember = False
            app.quit()

        QTimer.singleShot(0, shown)
        return app.exec()
    QTimer.singleShot(0, window.load_initial_data)
    for path in args.paths:
        QTimer.singleShot(0, lambda p=path: window.open_path(p))
    return app.exec()


def _tidy_in_background() -> None:
    """Remove what killed imports left in the workspace (engine.workspace.tidy), off the GUI thread."""
    import threading

    def tidy() -> None:
        from engine.workspace import tidy

        try:
            tidy()
        except OSError:
            pass

    threading.Thread(target=tidy, name="lathe-tidy", daemon=True).start()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
