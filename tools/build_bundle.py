"""Build the bundle wheel from bundle_info.xml with ChimeraX's own bundle builder (what `devel build .` runs).

bundle_info.xml's ExtraFiles copy onnx_models/ and docs/user/ into the package (src/onnx_models, src/docs, both
gitignored) during the build, so nothing is staged by hand here.
"""

import collections
import collections.abc
import os
import shutil
import sys

# grako (imported with chimerax) still uses the pre-3.10 aliases
for _n in ("Mapping", "MutableMapping", "Sequence", "MutableSequence", "Set", "MutableSet", "Callable", "Iterable"):
    setattr(collections, _n, getattr(collections.abc, _n))


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from chimerax.bundle_builder import BundleBuilder

    class Logger:
        def info(self, m): print(m)
        def warning(self, m): print("warning:", m, file=sys.stderr)
        def error(self, m): print("error:", m, file=sys.stderr)
    for d in ("build", "dist"):
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    bb = BundleBuilder(Logger(), root)
    bb.make_wheel()
    # setuptools leaves ChimeraX_DEFMap.egg-info in the checkout; on sys.path (pytest's rootdir, `python -` here) its
    # PKG-INFO would shadow the installed wheel's METADATA, and ChimeraX's toolshed would see no bundle
    for d in os.listdir(root):
        if d.endswith(".egg-info"):
            shutil.rmtree(os.path.join(root, d))
    print(bb.wheel_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
