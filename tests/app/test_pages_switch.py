"""Issue 17, items 1-2: page switching in the window (offscreen; the real window is in tests/e2e)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QPushButton


def _visible(window) -> list[str]:
    return [k for k, v in window.pages.items() if v.isVisible()]


def _activate(window, qtbot):
    window.activateWindow()
    window.raise_()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5_000)


def test_the_sidebar_never_takes_keyboard_focus(window, qtbot):
    """Item 1: the sidebar took focus when the window was activated and Qt made row 0 (Models)
    current, so first launch jumped from Welcome to Models. A Mac source list takes no focus."""
    window.show_page("welcome")
    _activate(window, qtbot)
    window.sidebar.setFocus(Qt.FocusReason.TabFocusReason)
    window.focusNextChild()
    qtbot.wait(50)
    assert window.current_page() == "welcome"
    assert _visible(window) == ["welcome"]
    assert window.sidebar.focusPolicy() == Qt.FocusPolicy.NoFocus
    # A click still chooses a page.
    rect = window.sidebar.visualItemRect(window.sidebar.item(2))
    qtbot.mouseClick(window.sidebar.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert _visible(window) == ["train"]


def test_leaving_welcome_with_focus_on_its_button_shows_one_page(window, qtbot):
    """Item 2: hiding Welcome moved focus to the sidebar, which re-entered show_page during the
    switch and left Models painted under every later page."""
    window.show_page("data")
    window.show_page("welcome")
    _activate(window, qtbot)
    skip = next(b for b in window.welcome.findChildren(QPushButton) if b.text() == "Go to the app")
    skip.setFocus()
    qtbot.mouseClick(skip, Qt.MouseButton.LeftButton)
    qtbot.wait(50)
    assert _visible(window) == ["data"]
    for name in ("train", "chat", "runs", "data"):
        window.show_page(name)
        assert _visible(window) == [name]


def test_a_page_asked_for_during_a_switch_is_shown_after_it(window, qtbot):
    """Item 2 at its root: a request that arrives while a switch is half done (here from the
    stack's own signal) waits for that switch; exactly one page is visible afterwards."""
    asked = []

    def reenter(_index):
        if not asked:
            asked.append(1)
            window.show_page("models")

    window.stack.currentChanged.connect(reenter)
    window.show_page("runs")
    assert window.current_page() == "models"
    assert _visible(window) == ["models"]
    assert window.sidebar.currentItem().data(Qt.ItemDataRole.UserRole) == "models"
