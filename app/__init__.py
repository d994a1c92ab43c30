"""Lathe's desktop GUI (PySide6). A view on the engine; never runs training in its own process."""

from __future__ import annotations

import sys


def _keep_none_alive() -> bool:
    """Work around a reference-counting bug of PySide6 6.12 on Python 3.11.

    Its void methods (setText, update, drawLine, ...) return None without taking a reference, as
    if None were immortal (it is from Python 3.12 on). On 3.11 each call then drops one reference
    to None, and after a few thousand calls the interpreter aborts with "deallocating None" (the
    bools that Signal.emit() returns suffer the same). When the bug is detected, None, True and
    False get the practically endless reference counts they have on 3.12.
    Returns whether the workaround was applied.
    """
    if sys.version_info >= (3, 12):
        return False
    import ctypes

    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(16):
        probe.setObjectName("probe")
    if sys.getrefcount(None) >= before:
        return False
    # Signal.emit() shows the same bug with the bools it returns; protect all three singletons.
    for singleton in (None, True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += 1 << 48
    return True


NONE_WORKAROUND = _keep_none_alive()
