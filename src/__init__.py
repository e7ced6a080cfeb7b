"""ChimeraX-DEFMap: protein dynamics predicted from cryo-EM maps (Matsumoto et al. 2021) as a ChimeraX command."""

__version__ = "0.1.0"

try:
    from chimerax.core.toolshed import BundleAPI
except ImportError:  # training imports chimerax.defmap.preprocess without ChimeraX
    BundleAPI = object


class _DefmapAPI(BundleAPI):
    api_version = 1

    @staticmethod
    def register_command(bi, ci, logger):
        from . import cmd
        cmd.register_defmap_commands(logger)

    @staticmethod
    def initialize(session, bi):
        # Release onnxruntime sessions before exit: ORT-CUDA can otherwise hang ChimeraX on Linux at quit.
        from . import cmd
        if hasattr(session, "triggers") and "app quit" in getattr(session.triggers, "_triggers", {}):
            session.triggers.add_handler("app quit", lambda *_: cmd.release_predictors())

    @staticmethod
    def get_class(class_name):
        return None


bundle_api = _DefmapAPI()
