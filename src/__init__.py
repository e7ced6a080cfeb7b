"""ChimeraX-DEFMap: protein dynamics predicted from cryo-EM maps (Matsumoto et al. 2021) as a ChimeraX command."""

__version__ = "0.1.0"

try:
    from chimerax.core.toolshed import BundleAPI
except ImportError:  # training imports chimerax.defmap.preprocess without ChimeraX
    BundleAPI = object


class _DefmapAPI(BundleAPI):
    api_version = 1

    # command name -> (module, function, CmdDesc factory); one line per "ChimeraX :: Command" in bundle_info.xml
    COMMANDS = {"defmap": ("cmd", "defmap", "defmap_desc"),
                "defmap models": ("models_cmd", "defmap_models", "defmap_models_desc"),
                "defmap compare": ("compare", "defmap_compare", "defmap_compare_desc"),
                "defmap fragments": ("fragments", "defmap_fragments", "defmap_fragments_desc")}

    @staticmethod
    def register_command(bi, ci, logger):
        """Called lazily by ChimeraX's toolshed for each ``ChimeraX :: Command`` line of the wheel's METADATA."""
        import importlib

        from chimerax.core.commands import register
        module, func, desc = _DefmapAPI.COMMANDS[ci.name]
        mod = importlib.import_module(f"{__name__}.{module}")
        register(ci.name, getattr(mod, desc)(), getattr(mod, func), logger=logger)

    @staticmethod
    def get_class(class_name):
        return None


bundle_api = _DefmapAPI()
