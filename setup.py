"""Maps the design card's top-level folders onto the `fedlora.*` import names.

pyproject.toml holds all metadata; this file only computes `packages`/`package_dir`, walking
each folder so that sub-packages added later are picked up without editing a list.
"""

from pathlib import Path

from setuptools import setup

FOLDERS = {
    "fedlora": "fedlora",
    "fedlora.client": "client",
    "fedlora.server": "server",
    "fedlora.aggregation": "aggregation",
    "fedlora.privacy": "privacy",
    "fedlora.simulations": "simulations",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    root = Path(__file__).parent
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in FOLDERS.items():
        base = root / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            parts = [] if str(rel) == "." else list(rel.parts)
            if any(p.startswith((".", "_")) or p == "build" for p in parts):
                continue
            pkg = ".".join([name, *parts])
            packages.append(pkg)
            package_dir[pkg] = str(Path(folder, *parts))
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
