"""Training subproject of ChimeraX-DEFMap: ensembles, simulated maps, the DEFMap CNN, evaluation, ONNX export."""

__version__ = "0.1.0"
