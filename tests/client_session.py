"""Run inside the fresh client environment by tests/test_real_client.py: boot ChimeraX, let its own toolshed register
the installed bundle's commands, run them, and write what happened as JSON (argv[1]).

Nothing of the bundle is imported or registered by hand here; the harness (tools/headless.py) registers only
built-in ChimeraX commands that the monolithic PyPI wheel's toolshed cannot list.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(out_path: str, shared: str) -> int:
    sys.path.insert(0, str(ROOT / "tools"))
    import headless
    from chimerax.core.logger import StringPlainTextLog

    session = headless.boot()
    from chimerax.core import toolshed
    from chimerax.core.commands import cli, run

    ts = toolshed.get_toolshed()
    out: dict = {"python": sys.executable,
                 "absent_packages": [m for m in ("onnx", "torch", "mrcfile") if importlib.util.find_spec(m) is None]}
    # the toolshed again, from scratch, with its messages captured (boot() printed them to the log as well)
    with StringPlainTextLog(session.logger) as log:
        ts.reload(session.logger, rebuild_cache=True)
    out["toolshed_log"] = log.getvalue()
    bi = ts.find_bundle("ChimeraX-DEFMap", session.logger)
    out["bundle"] = None if bi is None else {"name": bi.name, "version": bi.version,
                                             "commands": [c.name for c in bi.commands], "custom_init": bi.custom_init}
    import chimerax.defmap
    out["package_file"] = chimerax.defmap.__file__
    out["help_url"] = cli.command_url("defmap")
    out["help_dirs"] = toolshed.get_help_directories()
    out["usage"] = {name: cli.usage(session, name) for name in ("defmap", "defmap models", "defmap compare",
                                                                "defmap fragments")}
    models = run(session, "defmap models")
    out["models"] = [{"name": m.name, "path": str(m.path)} for m in models]
    d = Path(shared) / "emdb"
    run(session, f"open {d / 'emd_3488.mrc'}")
    run(session, f"open {d / '5me2.pdb'}")
    r = run(session, "defmap #1 structure #2 mapResolution 3.2")
    out["provider"] = r.provider
    out["model"] = r.model.name
    out["residues"] = [[res.chain_id, int(res.number), float(v)] for res, v in zip(r.residues, r.residue_values)]
    j = run(session, "defmap models mapResolution 5.5", return_json=True)
    out["models_json"] = json.loads(j.json_value)
    Path(out_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
