"""Package layout that pyproject.toml cannot express on its own.

`resources/` (presets, the recommended-model list, the style sheet, the icon, the sample dataset) is a
top-level folder of the repository, as the design asks, but an installed Lathe needs it too: it is
shipped inside the wheel as the data-only package `lathe_resources`, and
`engine.workspace.resources_dir()` finds it there when the source tree is not beside the code.
"""

from setuptools import find_packages, setup

DATA = ["*.yaml", "*.jsonl", "*.json", "*.jinja", "*.qss", "*.svg", "*.png", "*.md"]

setup(
    packages=[*find_packages(include=["engine*", "app*"]), "lathe_resources"],
    package_dir={"lathe_resources": "resources"},
    package_data={"": DATA, "lathe_resources": [*DATA, *(f"**/{p}" for p in DATA)]},
)
