"""Lathe's desktop GUI (PySide6). A view on the engine; never runs training in its own process."""
