"""Build the bundle wheel from bundle_info.xml with ChimeraX's own bundle builder (proves the XML is valid)."""

import collections
import collections.abc
import glob
import os
import shutil
import sys

# grako (imported with chimerax) still uses the pre-3.10 aliases
for _n in ("Mapping", "MutableMapping", "Sequence", "MutableSequence", "Set", "MutableSet", "Callable", "Iterable"):
    setattr(collections, _n, getattr(collections.abc, _n))


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # ship onnx_models/*.onnx inside the package (DataDir onnx_models); the copy is gitignored
    dst = os.path.join(root, "src", "onnx_models")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for f in glob.glob(os.path.join(root, "onnx_models", "*.onnx")):
        shutil.copy2(f, dst)
    open(os.path.join(dst, "README.txt"), "w").write("Shipped DEFMap ONNX models (copied from onnx_models/).\n")
    from chimerax.bundle_builder import BundleBuilder

    class Logger:
        def info(self, m): print(m)
        def warning(self, m): print("warning:", m, file=sys.stderr)
        def error(self, m): print("error:", m, file=sys.stderr)
    for d in ("build", "dist"):
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    bb = BundleBuilder(Logger(), root)
    bb.make_wheel()
    print(bb.wheel_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
