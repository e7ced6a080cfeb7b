"""Boot a real ChimeraX session without a GUI, for tests, `make run` and `make demo` (not part of the bundle).

The PyPI ChimeraX wheel is one monolithic distribution: it lacks ``chimerax.core.nogui``, and its toolshed lists no
built-in bundle.  So this module repeats the start-up steps of ``chimerax/core/__main__.py`` and registers the built-in
commands the project uses by hand.  ``defmap`` itself is *not* registered here: ChimeraX's own toolshed reads the
installed wheel's METADATA and registers its commands lazily, exactly as in a real ChimeraX after
``toolshed install``.  In a real ChimeraX none of this file is needed: the same ``.cxc`` scripts run with
``chimerax --nogui --exit --script file.cxc``.
"""

from __future__ import annotations

import collections
import collections.abc
import os
import sys
import types

# grako (atom-spec parser) still uses the pre-3.10 aliases.
for _name in ("Mapping", "MutableMapping", "Sequence", "MutableSequence", "Set", "MutableSet", "Callable", "Iterable",
              "Hashable", "Sized", "Container", "Iterator"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

# Commands each bundle registers in real ChimeraX (bundle_info.xml); registered here by bundle, as the toolshed would.
BUNDLE_COMMANDS = {
    "map": ["volume", "molmap", "measure mapvalues", "measure mapstats"],
    "surface": ["surface", "color sample", "color zone"],  # "surface" registers all surface subcommands
    "color_key": ["key"],
    "label": ["2dlabels"],
}
INIT_BUNDLES = ("surface", "map", "std_commands", "label")  # built-ins with customInit; defmap has none
PACKAGE_BUNDLE_NAMES = {"core": "ChimeraX-Core"}


class _NoGuiUI:
    """The few UI attributes that non-GUI ChimeraX code reads."""

    is_gui = False
    main_window = None
    mouse_modes = None

    def __init__(self, session):
        self.session = session
        self.has_graphics = False
        from chimerax.core.triggerset import TriggerSet
        self.triggers = TriggerSet()
        for name in ("ready", "tool window show", "tool window hide"):
            self.triggers.add_trigger(name)

    def initialize_offscreen_rendering(self):
        from chimerax import graphics
        try:
            ctx = graphics.OffScreenRenderingContext()
        except Exception as e:  # no OSMesa: images are unavailable, everything else works
            self.session.logger.info(f"Offscreen rendering unavailable: {e}")
            return
        self.session.main_view.initialize_rendering(ctx)
        self.has_graphics = True

    def thread_safe(self, func, *args, **kw):
        func(*args, **kw)

    def update_undo(self, *args, **kw):
        pass

    def quit(self, confirm=False):
        pass

    def timer(self, millisec, callback, *args, **kw):
        callback(*args, **kw)

    def initialize_color_output(self, *args):
        pass


def _nogui_log_class():
    from chimerax.core.logger import PlainTextLog

    class NoGuiLog(PlainTextLog):
        """Log to stdout (errors and warnings to stderr), as ChimeraX --nogui does."""

        excludes_other_logs = False

        def __init__(self, stream=None):
            super().__init__()
            self.stream = stream

        def log(self, level, msg):
            out = self.stream or (sys.stderr if level >= self.LEVEL_WARNING else sys.stdout)
            print(msg.rstrip(), file=out, flush=True)
            return True

        def status(self, msg, color, secondary):
            """As ChimeraX's own nogui log: primary status messages (progress of long runs) go to stdout."""
            if secondary:
                return False
            if msg:
                print(f"STATUS:\n{msg}", file=self.stream or sys.stdout, flush=True)
            return True
    return NoGuiLog


def _install_nogui_module():
    import chimerax.core
    if "chimerax.core.nogui" in sys.modules:
        return
    mod = types.ModuleType("chimerax.core.nogui")
    mod.UI = _NoGuiUI
    mod.NoGuiLog = _nogui_log_class()
    sys.modules["chimerax.core.nogui"] = mod
    chimerax.core.nogui = mod


class _BundleInfo:
    """What session save/restore asks of a bundle: its name, versions and classes (bundle_api.get_class)."""

    def __init__(self, package: str):
        self.package = package
        self.name = PACKAGE_BUNDLE_NAMES.get(package, "ChimeraX-" + package.replace("_", " ").title().replace(" ", ""))
        self.version = "1.0"
        self.session_versions = range(1, 100)
        self.session_write_version = 1

    def get_class(self, class_name, logger=None):
        import importlib
        mod = importlib.import_module("chimerax." + self.package)
        return mod.bundle_api.get_class(class_name)


class _Toolshed:
    """ChimeraX's real toolshed, plus stand-in bundle infos for the built-in packages of the monolithic wheel (which
    its toolshed cannot list), so sessions that hold built-in models save and restore."""

    def __init__(self, real):
        self._real = real
        self._by_name: dict[str, _BundleInfo] = {}

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _info(self, package: str) -> _BundleInfo:
        bi = _BundleInfo(package)
        return self._by_name.setdefault(bi.name, bi)

    def find_bundle_for_class(self, cls):
        bi = self._real.find_bundle_for_class(cls)
        if bi is not None:
            return bi
        parts = cls.__module__.split(".")
        if parts[0] != "chimerax" or len(parts) < 2:
            return None
        return self._info(parts[1])

    def find_bundle(self, name, logger=None, installed=True, version=None):
        bi = self._real.find_bundle(name, logger, installed=installed, version=version)
        if bi is not None:
            return bi
        bi = self._by_name.get(name)
        if bi is None:
            for pkg in _known_packages():
                if self._info(pkg).name == name:
                    return self._by_name[name]
        return bi

    def bundle_link(self, name):
        return name


def _known_packages():
    import chimerax
    return [p for p in os.listdir(os.path.dirname(chimerax.__file__)) if not p.startswith("_")]


def _app_dirs():
    """Per-user folders ChimeraX keeps settings and file history in (set by chimerax/core/__main__.py)."""
    import chimerax
    if getattr(chimerax, "app_dirs", None) is not None:
        return
    from appdirs import AppDirs
    chimerax.app_dirs = AppDirs("ChimeraX", appauthor="UCSF", version="1.0")
    chimerax.app_dirs_unversioned = AppDirs("ChimeraX", appauthor="UCSF")
    root = os.path.dirname(chimerax.__file__)
    for attr, sub in (("app_data_dir", "share"), ("app_bin_dir", "bin"), ("app_lib_dir", "lib")):
        if not hasattr(chimerax, attr):
            setattr(chimerax, attr, os.path.join(root, sub))


def _qt_offscreen():
    """Color keys and 2D labels draw text with Qt: provide ChimeraX's ``Qt`` shim over PySide6, offscreen."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6 import QtCore, QtGui
    except ImportError:
        return None
    if "Qt" not in sys.modules:
        qt = types.ModuleType("Qt")
        qt.QtCore, qt.QtGui = QtCore, QtGui
        qt.qt_image_bytes = lambda qimage: bytes(qimage.constBits())
        qt.qt_have_web_engine = lambda: False

        def _deleted(obj):
            import shiboken6
            return not shiboken6.isValid(obj)
        qt.qt_object_is_deleted = _deleted
        sys.modules["Qt"], sys.modules["Qt.QtCore"], sys.modules["Qt.QtGui"] = qt, QtCore, QtGui
    return QtGui.QGuiApplication.instance() or QtGui.QGuiApplication(["chimerax-defmap"])


def boot(offscreen: bool = True, log_stream=None):
    """Create and initialize a ChimeraX session as ``chimerax --nogui --offscreen`` would."""
    _install_nogui_module()
    _app_dirs()
    _qt_offscreen()
    from chimerax.core import attributes, core_settings, undo
    from chimerax.core.session import Session, register_misc_commands
    session = Session("ChimeraX", offscreen_rendering=offscreen)
    core_settings.init(session)
    register_misc_commands(session)
    attributes.RegAttrManager(session)
    session.logger.add_log(sys.modules['chimerax.core.nogui'].NoGuiLog(log_stream))
    from chimerax.core import toolshed
    # as chimerax/core/__main__.py: the toolshed reads every installed distribution's METADATA (the bundle's wheel
    # among them) and registers the commands its "ChimeraX :: Command" lines name; no remote toolshed is asked
    toolshed.init(session.logger, rebuild_cache=True, check_available=False, session=session)
    session.toolshed = _Toolshed(toolshed.get_toolshed())
    from chimerax import atomic
    atomic.initialize_atomic(session)
    session.toolshed.bootstrap_bundles(session, False)  # installed bundles with customInit (none of ours)
    session.undo = undo.Undo(session, first=True)
    import importlib
    for package in INIT_BUNDLES:  # built-ins with customInit, as bootstrap_bundles would if it could list them
        importlib.import_module("chimerax." + package).bundle_api.initialize(session, session.toolshed._info(package))
    _register_commands(session)
    import atexit
    atexit.register(shutdown, session)
    return session


def shutdown(session) -> None:
    """What ChimeraX's own quit does before the interpreter goes (core/nogui.py and ui/gui.py ``quit``): cancel the
    logger's status timers (daemon threads that would otherwise fire into a half-torn-down interpreter), fire
    "app quit", and close the models and onnxruntime sessions while everything they refer to still exists.
    Runs at exit (atexit) and from the tests' session fixture; a second call does nothing."""
    if getattr(session, "_defmap_shut_down", False):
        return
    session._defmap_shut_down = True
    session.logger.clear()
    if "app quit" in getattr(session.triggers, "_triggers", {}):
        session.triggers.activate_trigger("app quit", None)
    session.models.close(session.models.list())
    from chimerax.defmap.predict import release_predictors
    release_predictors()
    session.logger.clear()  # closing may have shown a status


def _register_commands(session):
    import importlib

    from chimerax import std_commands
    from chimerax.atomic.selectors import register_selectors
    std_commands.register_commands(session)
    register_selectors(session.logger)  # protein, ligand, solvent, elements, ...
    for package, names in BUNDLE_COMMANDS.items():
        api = importlib.import_module("chimerax." + package).bundle_api
        for name in names:
            api.register_command(name, session.logger)
    _register_open_save(session)


OPEN_SUFFIXES = (".mrc", ".map", ".ccp4", ".pdb", ".ent", ".cif", ".mmcif", ".cxs")


def open_path(session, path: str, name: str | None = None):
    """Open a map, structure or session file by suffix (real ChimeraX uses its open-command providers)."""
    from chimerax.core.errors import UserError
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise UserError(f"File not found: {path}")
    low = path.lower()
    if low.endswith(".cxs"):
        from chimerax.core.session import open as open_session
        models, msg = open_session(session, path)
        return models
    if low.endswith((".mrc", ".map", ".ccp4")):
        from chimerax.map import volume_from_grid_data
        from chimerax.map_data import open_file
        try:
            grids = open_file(path)
        except Exception as e:
            raise UserError(f"Could not read map {path}: {e}") from None
        models = [volume_from_grid_data(g, session) for g in grids]
    elif low.endswith((".pdb", ".ent")):
        from chimerax.pdb import open_pdb
        models, msg = open_pdb(session, path)
        session.models.add(models)
    elif low.endswith((".cif", ".mmcif")):
        from chimerax.mmcif import open_mmcif
        models, msg = open_mmcif(session, path)
        session.models.add(models)
    else:
        raise UserError(f"Unsupported file type for open: {path} (use one of {', '.join(OPEN_SUFFIXES)})")
    if name:
        for m in models:
            m.name = name
    return models


def save_path(session, path: str, width: int = 800, height: int = 600, supersample: int = 3,
              attr_name: str | None = None, models=None, transparent_background: bool = False):
    """Save .png images, .defattr attribute files or .cxs sessions (the suffixes our scripts use)."""
    from chimerax.core.errors import UserError
    path = os.path.expanduser(path)
    low = path.lower()
    if low.endswith(".png"):
        if not session.ui.has_graphics:
            raise UserError("Cannot save an image: offscreen rendering (OSMesa) is unavailable")
        # overlays (color key, 2D labels) place themselves by the window's aspect: match the image's
        session.main_view.window_size = (width, height)
        img = session.main_view.image(width, height, supersample=supersample,
                                      transparent_background=transparent_background)
        img.save(path)
    elif low.endswith(".defattr"):
        if attr_name is None:
            raise UserError("Saving a .defattr file needs attrName")
        from chimerax.std_commands.defattr import write_defattr
        write_defattr(session, path, attr_name=attr_name, models=models)
    elif low.endswith(".cxs"):
        from chimerax.core.session import save as save_session
        save_session(session, path)
    else:
        raise UserError(f"Unsupported file type for save: {path} (use .png, .defattr or .cxs)")


def _register_open_save(session):
    from chimerax.core.commands import (
        BoolArg,
        CmdDesc,
        IntArg,
        ModelsArg,
        OpenFileNameArg,
        SaveFileNameArg,
        StringArg,
        register,
    )

    def open_cmd(session, path, name=None):
        return open_path(session, path, name)

    def save_cmd(session, path, width=800, height=600, supersample=3, attr_name=None, models=None,
                 transparent_background=False):
        save_path(session, path, width, height, supersample, attr_name, models, transparent_background)

    register("open", CmdDesc(required=[("path", OpenFileNameArg)], keyword=[("name", StringArg)],
                             synopsis="open a map, structure or session file"), open_cmd, logger=session.logger)
    register("save", CmdDesc(required=[("path", SaveFileNameArg)],
                             keyword=[("width", IntArg), ("height", IntArg), ("supersample", IntArg),
                                      ("attr_name", StringArg), ("models", ModelsArg),
                                      ("transparent_background", BoolArg)],
                             synopsis="save an image, attribute file or session"), save_cmd, logger=session.logger)


def run_script(session, path: str) -> None:
    """Run a .cxc command script line by line, stopping at the first error (like --exit --script)."""
    from chimerax.core.commands import run
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                run(session, line)


def main(argv: list[str] | None = None) -> int:
    """``python tools/headless.py script.cxc [...]``: what ``chimerax --nogui --exit --script`` does."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python tools/headless.py SCRIPT.cxc [SCRIPT.cxc ...]", file=sys.stderr)
        return 2
    for stream in (sys.stdout, sys.stderr):  # Å and ± in the log must not crash an ASCII-locale batch job
        stream.reconfigure(encoding="utf-8", errors="replace")
    from chimerax.core.errors import UserError
    session = boot()
    try:
        for path in argv:
            session.logger.info(f"Executing {path}")
            run_script(session, path)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
