"""Lathe's headless engine: data, models, training, chat and export on MLX. Never imports Qt."""

__version__ = "0.1.0"
