"""An install without torch, played in every Python process started with this folder first on PYTHONPATH (spawned
and fork-server children included): torch and MONAI cannot be found, as where they are not installed.

Each finder of `sys.meta_path` is wrapped to find nothing of theirs, so `import torch` raises
ModuleNotFoundError, `importlib.util.find_spec("torch")` is None, and `sys.modules` holds no "torch" key (a
None placed there instead breaks libraries that look torch up there, SciPy's array API check for one)."""

import sys

HIDDEN = ("torch", "monai")


class _Hide:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
