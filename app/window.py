"""The main window: sidebar (Models, Data, Train, Chat, Runs), menu bar, drops, quit-during-run."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QEvent, QEventLoop, QObject, QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from app.controller import TrainingController
from app.pages.chat import ChatPage
from app.pages.data import DataPage
from app.pages.models import ModelsPage
from app.pages.runs import RunsPage
from app.pages.train import TrainPage
from app.pages.welcome import WelcomePage
from app.tasks import Task
from app.theme import native_primary_buttons

PAGES = ["welcome", "models", "data", "train", "chat", "runs"]
SIDEBAR = [
    ("models", "Models", "▦"),
    ("data", "Data", "▤"),
    ("train", "Train", "◉"),
    ("chat", "Chat", "◍"),
    ("runs", "Runs", "☰"),
]


def settings_store() -> QSettings:
    """Window state lives in the workspace (tests and screenshots get their own)."""
    from engine.workspace import home

    return QSettings(str(home() / "window.ini"), QSettings.Format.IniFormat)


def looks_like_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors"))


def icon_path() -> Path:
    from engine.workspace import resources_dir

    return resources_dir() / "icon.svg"


class MainWindow(QMainWindow):
    sig_page_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, remember: bool = True):
        super().__init__(parent)
        self.setWindowTitle("Lathe")
        self.setAcceptDrops(True)
        self.remember = remember
        self.controller = TrainingController(self)
        self.tray: QSystemTrayIcon | None = None
        self.quit_confirmed = False

        self.welcome = WelcomePage()
        self.models = ModelsPage()
        self.data = DataPage()
        self.train = TrainPage(self.controller)
        self.chat = ChatPage()
        self.runs = RunsPage(self.controller)
        self.pages = {
            "welcome": self.welcome,
            "models": self.models,
            "data": self.data,
            "train": self.train,
            "chat": self.chat,
            "runs": self.runs,
        }
        self._switching = False
        self._pending_page: str | None = None
        self.stack = QStackedWidget()
        for name in PAGES:
            self.stack.addWidget(self.pages[name])

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        # A source list, as on the Mac: clicks choose a page, but it never takes keyboard focus.
        # With focus, Qt made row 0 current when the window was activated on Welcome (issue 17,
        # item 1) and re-entered show_page while a page was being hidden (item 2).
        self.sidebar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.sidebar.setIconSize(QSize(18, 18))
        for key, label, glyph in SIDEBAR:
            item = QListWidgetItem(f"{glyph}   {label}")
            item.setData(Qt.ItemDataRole.UserRole, key)
            item.setSizeHint(QSize(160, 34))
            self.sidebar.addItem(item)
        # Only a click chooses a page: a current row that changes for any other reason (Qt makes
        # row 0 current when the list gets focus) must not switch pages.
        self.sidebar.itemPressed.connect(self._on_sidebar_pressed)
        hint = QLabel("Drop a dataset\nor a model folder\nanywhere")
        hint.setObjectName("sidebarHint")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.run_indicator = QLabel("")
        self.run_indicator.setObjectName("sidebarHint")
        self.run_indicator.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.run_indicator.setWordWrap(True)
        side = QWidget()
        side.setObjectName("sidebarPane")
        side.setFixedWidth(180)
        sl = QVBoxLayout(side)
        sl.setContentsMargins(8, 14, 8, 14)
        brand = QLabel("Lathe")
        brand.setObjectName("brand")
        sl.addWidget(brand)
        sl.addWidget(self.sidebar, 1)
        sl.addWidget(self.run_indicator)
        sl.addWidget(hint)

        central = QWidget()
        cl = QHBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        cl.addWidget(side)
        cl.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self._build_menus()
        self._wire()
        native_primary_buttons(self)
        self.drop_overlay = DropOverlayWidget(central)
        self.resize(1240, 800)
        # Small enough to fit a 1024x640 screen with the title bar and menu bar.
        self.setMinimumSize(900, 560)
        if remember:
            self._restore()
        else:
            self.show_page("welcome")

    # -- menus --------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        mb = self.menuBar()
        file = mb.addMenu("&File")
        self.open_action = QAction("Open Dataset…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.open_dataset_dialog)
        file.addAction(self.open_action)
        self.open_folder_action = QAction("Open Dataset Folder…", self)
        self.open_folder_action.triggered.connect(self._on_open_folder_action)
        file.addAction(self.open_folder_action)
        self.import_model_action = QAction("Import Model Folder…", self)
        self.import_model_action.triggered.connect(self.models.import_folder_dialog)
        file.addAction(self.import_model_action)
        file.addSeparator()
        self.preferences_action = QAction("Preferences…", self)
        self.preferences_action.setShortcut(QKeySequence.StandardKey.Preferences)
        if self.preferences_action.shortcut().isEmpty():
            self.preferences_action.setShortcut(QKeySequence("Ctrl+,"))
        self.preferences_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.preferences_action.triggered.connect(self.show_preferences)
        file.addAction(self.preferences_action)
        file.addSeparator()
        self.quit_action = QAction("Quit Lathe", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        if self.quit_action.shortcut().isEmpty():
            self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.quit_action.triggered.connect(self.close)
        file.addAction(self.quit_action)

        train = mb.addMenu("&Training")
        self.start_action = QAction("Start Training", self)
        self.start_action.setShortcut(QKeySequence("Ctrl+R"))
        self.start_action.triggered.connect(self._on_start_action)
        self.stop_action = QAction("Stop Training", self)
        self.stop_action.setShortcut(QKeySequence("Ctrl+."))
        self.stop_action.setEnabled(False)
        self.stop_action.triggered.connect(self.train.stop)
        train.addAction(self.start_action)
        train.addAction(self.stop_action)

        view = mb.addMenu("&View")
        for i, (key, label, _) in enumerate(SIDEBAR, 1):
            act = QAction(label, self)
            act.setShortcut(QKeySequence(f"Ctrl+{i}"))
            act.triggered.connect(lambda _=False, k=key: self.show_page(k))
            view.addAction(act)

        help_menu = mb.addMenu("&Help")
        welcome = QAction("Welcome", self)
        welcome.triggered.connect(lambda: self.show_page("welcome"))
        help_menu.addAction(welcome)
        self.about_action = QAction("About Lathe", self)
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self.about_action.triggered.connect(self.show_about)
        help_menu.addAction(self.about_action)

    def _wire(self) -> None:
        c = self.controller
        c.sig_state_changed.connect(self._on_controller_state_changed)
        self.train.sig_run_ended.connect(self._on_train_run_ended)
        self.train.sig_chat_requested.connect(self.open_chat)
        self.train.sig_export_requested.connect(self.open_export)
        self.train.sig_show_runs.connect(lambda: self.show_page("runs"))
        self.train.sig_quantize_requested.connect(self._on_quantize_requested)
        self.runs.sig_resume_requested.connect(self.resume_run)
        self.runs.sig_chat_requested.connect(self.open_chat)
        self.runs.sig_export_requested.connect(self.open_export)
        self.welcome.sig_demo_requested.connect(self.start_demo)
        self.welcome.sig_open_dataset.connect(self.open_dataset_dialog)
        self.welcome.sig_use_sample.connect(self.use_sample_dataset)
        self.welcome.sig_show_models.connect(lambda: self.show_page("models"))
        self.welcome.sig_dismissed.connect(lambda: self.show_page("data"))
        self.data.sig_use_for_training.connect(self._on_data_use_for_training)
        self.models.sig_use_for_training.connect(self._on_models_use_for_training)
        self.models.sig_library_changed.connect(self.refresh_choices)
        self.train.settings.sig_changed.connect(self._on_train_settings_changed)

    # -- pages --------------------------------------------------------------------------------
    def show_page(self, name: str) -> None:
        """Show one page, and only that one.

        Switching cannot be re-entered: hiding a page moves keyboard focus, and whatever reacts
        to that (a focus handler, a selection change) may ask for another page while this switch
        is half done. Such a request is applied once this switch has finished.
        """
        if name not in self.pages:
            name = "data"
        if self._switching:
            self._pending_page = name
            return
        self._switching = True
        try:
            while True:
                self._switch_to(name)
                name, self._pending_page = self._pending_page, None
                if name is None or self.pages[name] is self.stack.currentWidget():
                    break
        finally:
            self._switching = False
        self.sig_page_changed.emit(self.current_page())

    def _switch_to(self, name: str) -> None:
        page = self.pages[name]
        self.stack.setCurrentWidget(page)
        for other in self.pages.values():  # never two pages on screen, whatever happened above
            if other is not page and not other.isHidden():
                other.hide()
        self.sidebar.blockSignals(True)
        row = next((i for i, (k, _, _) in enumerate(SIDEBAR) if k == name), -1)
        self.sidebar.setCurrentRow(row)
        self.sidebar.blockSignals(False)

    def visible_pages(self) -> list[str]:
        """The pages that are shown right now (exactly one in a healthy window)."""
        return [k for k, v in self.pages.items() if v.isVisible()]

    def current_page(self) -> str:
        w = self.stack.currentWidget()
        return next(k for k, v in self.pages.items() if v is w)

    def _on_sidebar_pressed(self, item) -> None:
        if item is not None:
            self.show_page(item.data(Qt.ItemDataRole.UserRole))

    def load_initial_data(self) -> None:
        """The slower listings (runs, library, datasets), after the window is on screen."""
        self.runs.refresh()
        self.models.refresh()
        self.data.refresh_datasets()
        self.refresh_choices()
        self.train.refresh_fit()

    def refresh_choices(self) -> None:
        from app.services import dataset_choices, model_choices

        task = Task(lambda: (model_choices(), dataset_choices()))
        task.sig_done.connect(lambda res: self.train.settings.set_choices(*res))
        self._choices_task = task.start(self)

    # -- actions ------------------------------------------------------------------------------
    def open_dataset_dialog(self) -> None:
        from app.pages.data import choose_dataset_file

        path = choose_dataset_file(self)
        if path:
            self.open_path(path)

    def _on_open_folder_action(self) -> None:
        self.show_page("data")
        self.data.open_folder_dialog()

    def use_sample_dataset(self) -> None:
        """Welcome's "Use the sample dataset": import the bundled sample, show its report."""
        from app.services import sample_dataset

        self.open_path(sample_dataset())

    def open_path(self, path: str | Path) -> None:
        """A dropped or opened file: a model folder or a GGUF file goes to Models, anything else to
        Data."""
        p = Path(path)
        if looks_like_model_folder(p) or (p.is_file() and p.suffix.lower() == ".gguf"):
            self.show_page("models")
            self.models.import_folder(p)
        else:
            self.show_page("data")
            self.data.open_path(p)

    def _on_start_action(self) -> None:
        self.show_page("train")
        self.train.start()

    def start_demo(self) -> None:
        from app.services import demo_config

        if self.controller.active:
            self.welcome.demo_ready(False, "A run is already training; stop it first.")
            return
        task = Task(demo_config)
        task.sig_done.connect(self._on_demo_config_ready)
        task.sig_failed.connect(
            lambda m, h: self.welcome.demo_ready(False, f"The demo cannot start: {m} {h}")
        )
        self._demo_task = task.start(self)

    def _on_demo_config_ready(self, result) -> None:
        cfg, notes = result
        self.welcome.demo_ready(True, " ".join(notes))
        self.show_page("train")
        self.train.start_with(cfg, notes)
        self.refresh_choices()

    def resume_run(self, run_dir: str) -> None:
        self.show_page("train")
        self.train.resume_run(Path(run_dir))

    def open_chat(self, run_dir: str) -> None:
        self.chat.set_run(run_dir)
        self.show_page("chat")

    def open_export(self, run_dir: str) -> None:
        from app.export_dialog import ExportDialog

        dialog = ExportDialog(run_dir, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def _on_data_use_for_training(self, path: str) -> None:
        self.train.settings.data.setEditText(path)
        self.refresh_choices()
        self.show_page("train")

    def _on_models_use_for_training(self, path: str) -> None:
        self.train.settings.model.setEditText(path)
        self.show_page("train")

    def _on_train_settings_changed(self) -> None:
        # The Data page measures token lengths with the model and length the run will use.
        settings = self.train.settings
        self.data.preferred_model = settings.model.currentText().strip() or None
        self.data.max_seq_length = int(settings.fields["data.max_seq_length"].value())

    def _on_quantize_requested(self, model: str) -> None:
        self.show_page("models")
        self.models.select_model(model)

    def _on_controller_state_changed(self, state: str) -> None:
        active = state != "idle"
        self.stop_action.setEnabled(active)
        self.start_action.setEnabled(not active)
        self.run_indicator.setText("● training" if active else "")

    def _on_train_run_ended(self, state: str, message: str) -> None:
        if app_preference("notify"):
            self.notify("Lathe: training " + state, message)

    def notify(self, title: str, message: str) -> bool:
        """A system notification where the platform has one (guarded; False when not shown)."""
        try:
            if not QSystemTrayIcon.isSystemTrayAvailable():
                return False
            if self.tray is None:
                self.tray = QSystemTrayIcon(QIcon(str(icon_path())), self)
                self.tray.show()
            if not self.tray.supportsMessages():
                return False
            self.tray.showMessage(title, message, QSystemTrayIcon.MessageIcon.Information, 8000)
            return True
        except RuntimeError:
            return False

    def show_about(self) -> None:
        QMessageBox.about(self, "About Lathe", about_text())

    def show_preferences(self) -> None:
        PreferencesDialog(self).exec()

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt API
        # Light/dark switch: the style sheet refers to palette roles, which are resolved when a
        # widget is polished, so polish again with the new palette.
        if event.type() == QEvent.Type.ApplicationPaletteChange:
            app = QApplication.instance()
            if app is not None and app.styleSheet():
                from app.theme import style_sheet

                qss = style_sheet(app.palette())
                if qss != app.styleSheet():
                    app.setStyleSheet(qss)
        super().changeEvent(event)

    # -- drops and file-open events -----------------------------------------------------------
    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        if _accept_as_copy(event):
            event.accept()
            self.drop_overlay.show_for(
                [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
            )

    def dragLeaveEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.drop_overlay.hide()
        super().dragLeaveEvent(event)

    def dragMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        if _accept_as_copy(event):
            event.accept()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.drop_overlay.hide()
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths and _accept_as_copy(event):
            event.accept()
            self.open_path(paths[0])

    # -- state --------------------------------------------------------------------------------
    def _restore(self) -> None:
        s = settings_store()
        geometry = s.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        first = not s.value("welcome/seen", False, type=bool)
        self.show_page("welcome" if first else str(s.value("window/page", "data")))
        s.setValue("welcome/seen", True)

    def save_state(self) -> None:
        if not self.remember:
            return
        s = settings_store()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/page", self.current_page())
        s.sync()

    def ask_stop_run(self) -> bool:
        """Ask whether to stop the active run; True means stop and quit."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Training is running")
        box.setText("A run is still training. Stop it and quit?")
        box.setInformativeText("Lathe saves a checkpoint first, so you can resume the run later.")
        stop = box.addButton("Stop and Quit", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is stop

    def confirm_quit(self) -> bool:
        """May the window close now? Asks during a run; stopping waits (bounded) for the checkpoint."""
        if not self.controller.active:
            return True
        if not self.ask_stop_run():
            return False
        self.controller.stop()
        loop = QEventLoop()
        self.controller.sig_finished.connect(loop.quit)
        limit = self.controller.stop_wait_ms + self.controller.terminate_wait_ms + 2000
        QTimer.singleShot(limit, loop.quit)
        if self.controller.active:
            loop.exec()
        if self.controller.active:
            self.controller.kill()
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.quit_confirmed and not self.confirm_quit():
            event.ignore()
            return
        self.quit_confirmed = True
        self.save_state()
        if self.tray is not None:
            self.tray.hide()
        self.chat.controller.shutdown()  # frees the chat model and ends its thread before exit
        self.data.shutdown()  # an import still running in its worker process ends with the window
        event.accept()


def _accept_as_copy(event) -> bool:
    """Local files are taken as a Copy, never a Move: Lathe reads a dropped file and leaves it
    where it is, and a drag source that honours Move would delete the user's original.
    False (the drop is refused) when the source offers no Copy or no local file."""
    mime = event.mimeData()
    if not (mime.hasUrls() and any(u.isLocalFile() for u in mime.urls())):
        return False
    if not event.possibleActions() & Qt.DropAction.CopyAction:
        return False
    event.setDropAction(Qt.DropAction.CopyAction)
    return True


class DropOverlayWidget(QWidget):
    """The window's highlight while a file is dragged over it: an accent border and what a drop
    will do ("Drop to import bank-support"). Mouse events pass through it."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setObjectName("dropOverlay")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.text = ""
        self.hide()
        parent.installEventFilter(self)

    def show_for(self, paths: list[Path]) -> None:
        from app.names import dataset_name, model_name

        first = paths[0] if paths else None
        if first is None:
            self.text = "Drop to open"
        elif looks_like_model_folder(first):
            self.text = f"Drop to add the model {model_name(first)}"
        else:
            self.text = f"Drop to import {dataset_name(first)}"
        self.setGeometry(self.parentWidget().rect())
        self.raise_()
        self.show()
        self.update()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Resize and self.isVisible():
            self.setGeometry(self.parentWidget().rect())
        return False

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        from PySide6.QtGui import QColor, QPainter, QPen

        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        accent = self.palette().color(self.palette().ColorRole.Highlight)
        fill = QColor(accent)
        fill.setAlpha(28)
        p.setBrush(fill)
        p.setPen(QPen(accent, 3))
        p.drawRoundedRect(self.rect().adjusted(4, 4, -5, -5), 12, 12)
        font = p.font()
        font.setPixelSize(16)
        font.setBold(True)
        p.setFont(font)
        metrics = p.fontMetrics()
        width = metrics.horizontalAdvance(self.text) + 40
        pill = self.rect().adjusted(0, 0, 0, 0)
        pill.setSize(pill.size().__class__(width, metrics.height() + 20))
        pill.moveCenter(self.rect().center())
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(accent)
        p.drawRoundedRect(pill, pill.height() / 2, pill.height() / 2)
        p.setPen(self.palette().color(self.palette().ColorRole.HighlightedText))
        p.drawText(pill, Qt.AlignmentFlag.AlignCenter, self.text)
        p.end()


class FileOpenFilter(QObject):
    """macOS: files dropped on the Dock icon arrive as QFileOpenEvent on the application."""

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.FileOpen:
            path = event.file() or event.url().toLocalFile()
            if path:
                self.window.open_path(path)
                return True
        return False


class PreferencesDialog(QDialog):
    """Workspace location and the few app-level preferences (settings.yaml)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from engine.workspace import home, load_settings

        self.setWindowTitle("Preferences")
        self.settings = load_settings()
        app = self.settings.get("app", {}) if isinstance(self.settings.get("app"), dict) else {}
        where = QLabel(str(home()))
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.keep_awake = QCheckBox("Keep the Mac awake while training")
        self.keep_awake.setChecked(bool(app.get("keep_awake", True)))
        self.keep_awake.setEnabled(sys.platform == "darwin")
        self.notify = QCheckBox("Notify me when a run ends")
        self.notify.setChecked(bool(app.get("notify", True)))
        form = QFormLayout()
        form.addRow("Workspace", where)
        form.addRow("", self.keep_awake)
        form.addRow("", self.notify)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def accept(self) -> None:
        from engine.workspace import save_settings

        app = dict(self.settings.get("app") or {})
        app.update({"keep_awake": self.keep_awake.isChecked(), "notify": self.notify.isChecked()})
        self.settings["app"] = app
        try:
            save_settings(self.settings)
        except OSError as exc:
            QMessageBox.warning(self, "Preferences not saved", str(exc))
            return
        super().accept()


def app_preference(name: str, default: bool = True) -> bool:
    from engine.workspace import load_settings

    app = load_settings().get("app")
    return bool(app.get(name, default)) if isinstance(app, dict) else default


def about_text() -> str:
    try:
        from importlib.metadata import version

        v = version("lathe")
    except Exception:  # noqa: BLE001
        v = "dev"
    return (
        f"<b>Lathe {v}</b><br>Fine-tune open language models on your own data, privately, "
        "on your Mac. Training runs with MLX in a separate process; nothing leaves the machine."
    )
