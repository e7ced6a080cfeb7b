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
        """Called lazily by ChimeraX's toolshed for each ``ChimeraX :: Command`` line of the wheel's METADATA."""
        from . import cmd
        cmd.register_command(ci.name, logger)

    @staticmethod
    def get_class(class_name):
        return None


bundle_api = _DefmapAPI()
