"""Faults outside the user's data: broken or inconsistent model files, a GPU that is not there, maps too big for memory.

Each must end in one clear ``UserError`` sentence (or, for ``device auto``, a CPU result that says so), with the inputs
unchanged.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from chimerax.core.commands import run
from chimerax.core.errors import UserError

from chimerax.defmap import network
from chimerax.defmap import predict as dm_predict
from chimerax.defmap import preprocess as pp

from .hostile import MapSpec, build_map, compare, heavy_xyz_from_pdb, helix_pdb, snapshot

SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
HELIX = helix_pdb(14)


@pytest.fixture
def scene(cx, tmp_path):
    """#1 a map with density at a helix, #2 the helix."""
    build_map(cx, MapSpec(), heavy_xyz_from_pdb(HELIX))
    (tmp_path / "h.pdb").write_text(HELIX)
    run(cx, f"open {tmp_path / 'h.pdb'}", log=False)
    dm_predict.release_predictors()
    yield cx
    dm_predict.release_predictors()


def refused(session, command: str, *words: str) -> str:
    """Run a command that must fail with one UserError sentence containing ``words``, changing nothing."""
    before = snapshot(session)
    with pytest.raises(UserError) as e:
        run(session, command, log=False)
    msg = str(e.value)
    assert msg and "\n" not in msg.strip() and len(msg) < 400, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    assert not compare(before, session, recolored=set())
    s = session.models.list(model_id=(2,))
    if s and hasattr(s[0], "residues"):
        assert all(getattr(r, "defmap", None) is None for r in s[0].residues), "a failed run left attributes"
    return msg


def _edit_metadata(src: Path, dst: Path, value: str | None) -> Path:
    import onnx
    m = onnx.load(str(src))
    del m.metadata_props[:]
    if value is not None:
        m.metadata_props.append(onnx.StringStringEntryProto(key=network.META_KEY, value=value))
    onnx.save(m, str(dst))
    return dst


def _meta(**changes) -> str:
    meta = json.loads(network.make_metadata("x", SPEC, fully_convolutional=True)[network.META_KEY])
    for k, v in changes.items():
        if k.startswith("features."):
            meta["features"][k.split(".", 1)[1]] = v
        elif v is _DROP:
            meta.pop(k)
        else:
            meta[k] = v
    return json.dumps(meta)


_DROP = object()


# ---------------------------------------------------------------------------------------------- model files

@pytest.mark.parametrize("kind", ["missing", "empty", "random_bytes", "truncated", "text", "directory"])
def test_missing_or_corrupt_onnx_file(scene, random_model, tmp_path, kind):
    p = tmp_path / f"{kind}.onnx"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random_bytes":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        raw = Path(random_model).read_bytes()
        p.write_bytes(raw[: len(raw) // 2])
    elif kind == "text":
        p.write_text("this is not a model\n")
    elif kind == "directory":
        p.mkdir()
    refused(scene, f"defmap #1 structure #2 model {p}", p.name)


def test_model_file_corrupted_after_first_use(scene, random_model, tmp_path):
    p = tmp_path / "changing.onnx"
    p.write_bytes(Path(random_model).read_bytes())
    run(scene, f"defmap #1 structure #2 model {p} color false", log=False)
    p.write_bytes(b"\0" * 100)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    before = snapshot(scene)
    with pytest.raises(UserError, match="changing.onnx"):
        run(scene, f"defmap #1 structure #2 model {p}", log=False)
    assert not compare(before, scene, recolored=set())


METADATA_FAULTS = {
    "no_metadata": (None, "no DEFMap metadata"),
    "not_json": ("{features: 5", "inconsistent"),
    "json_list": ("[1, 2, 3]", "inconsistent"),
    "json_string": ('"defmap"', "inconsistent"),
    "future_format": (_meta(format_version=99), "format_version"),
    "no_features": (_meta(features=_DROP), "inconsistent"),
    "features_null": (_meta(features=None), "inconsistent"),
    "box_fraction": (_meta(**{"features.box": 3.5}), "box"),
    "box_text": (_meta(**{"features.box": "ten"}), "inconsistent"),
    "box_huge": (_meta(**{"features.box": 1000}), "box"),
    "voxel_negative": (_meta(**{"features.voxel_size": -1.5}), "voxel_size"),
    "voxel_nan": (_meta(**{"features.voxel_size": "nan"}), "voxel_size"),
    "resolution_inf": (_meta(**{"features.filter_resolution": "inf"}), "filter_resolution"),
    "normalization_unknown": (_meta(**{"features.normalization": "whole_box"}), "normalization"),
    "output_unknown": (_meta(output="rmsf_nm"), "output"),
    "no_output": (_meta(output=_DROP), "inconsistent"),
    "metrics_list": (_meta(metrics=[1, 2]), "inconsistent"),
}


@pytest.mark.parametrize("fault", list(METADATA_FAULTS))
def test_model_metadata_missing_or_inconsistent(scene, random_model, tmp_path, fault):
    value, word = METADATA_FAULTS[fault]
    p = _edit_metadata(Path(random_model), tmp_path / f"{fault}.onnx", value)
    refused(scene, f"defmap #1 structure #2 model {p}", p.name, word)


def _onnx(path: Path, nodes, inputs, outputs, inits, meta: dict[str, str]) -> Path:
    import onnx
    from onnx import helper
    g = helper.make_graph(nodes, "faulty", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in meta.items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(m, str(path))
    return path


def _conv_model(path: Path, kernel: int, in_shape, *, bias: float = -0.1, fully_conv: bool = True,
                out_type: str = "float", spec: pp.FeatureSpec = SPEC) -> Path:
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.full((1, 1, kernel, kernel, kernel), 1e-3, np.float32), "W")
    b = numpy_helper.from_array(np.array([bias], np.float32), "B")
    nodes = [helper.make_node("Conv", ["density", "W", "B"], ["y" if out_type != "float" else "out"],
                              kernel_shape=[kernel] * 3)]
    if out_type == "int":
        nodes.append(helper.make_node("Cast", ["y"], ["out"], to=TensorProto.INT32))
    elem = TensorProto.INT32 if out_type == "int" else TensorProto.FLOAT
    return _onnx(path, nodes, [helper.make_tensor_value_info("density", TensorProto.FLOAT, in_shape)],
                 [helper.make_tensor_value_info("out", elem, None)], [w, b],
                 network.make_metadata("faulty", spec, fully_convolutional=fully_conv))


MODEL_FAULTS = {
    # the network sees 8³ but the metadata promises 10³ patches: 27 outputs per patch
    "kernel_smaller_than_box": (lambda p: _conv_model(p, 8, ["N", 1, "D", "H", "W"]), "box"),
    # a fixed 12³ input while the metadata says box 10
    "fixed_input_not_box": (lambda p: _conv_model(p, 10, ["N", 1, 12, 12, 12], fully_conv=False), "box"),
    "fixed_input_smaller": (lambda p: _conv_model(p, 10, ["N", 1, 8, 8, 8]), "box"),
    "nan_output": (lambda p: _conv_model(p, 10, ["N", 1, "D", "H", "W"], bias=float("nan")), "NaN"),
    "inf_output": (lambda p: _conv_model(p, 10, ["N", 1, "D", "H", "W"], bias=float("inf")), "infinite"),
    "integer_output": (lambda p: _conv_model(p, 10, ["N", 1, "D", "H", "W"], out_type="int"), "one float"),
    "four_d_input": (lambda p: _four_d(p), "5-D"),
}


def _four_d(p: Path) -> Path:
    from onnx import TensorProto, helper
    node = helper.make_node("ReduceMean", ["density"], ["out"], keepdims=0)
    return _onnx(p, [node], [helper.make_tensor_value_info("density", TensorProto.FLOAT, ["N", 10, 10, 10])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [],
                 network.make_metadata("faulty", SPEC, fully_convolutional=False))


@pytest.mark.parametrize("fault", list(MODEL_FAULTS))
@pytest.mark.parametrize("mode", ["structure", "voxel"])
def test_model_network_contradicts_metadata(scene, tmp_path, fault, mode):
    build, word = MODEL_FAULTS[fault]
    p = build(tmp_path / f"{fault}.onnx")
    target = "structure #2 " if mode == "structure" else "level 0.05 "
    msg = refused(scene, f"defmap #1 {target}model {p} color false", word)
    assert "faulty" in msg or fault in msg, msg


# ---------------------------------------------------------------------------------------------- devices

def test_device_gpu_without_cuda_is_a_clear_error(scene, random_model):
    try:
        network.Predictor(network.read_model_info(random_model), "gpu").close()
    except network.ModelError:
        pass
    else:
        pytest.skip("this machine has a working CUDA provider, so device gpu runs")
    refused(scene, f"defmap #1 structure #2 model {random_model} device gpu", "gpu", "CUDA", "device auto or cpu")


def test_device_auto_falls_back_to_cpu_and_says_so(scene, random_model):
    res = run(scene, f"defmap #1 structure #2 model {random_model} device auto", log=False)
    assert res.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert np.isfinite(res.atom_values).all()
    cpu = run(scene, f"defmap #1 structure #2 model {random_model} device cpu", log=False)
    assert cpu.provider == "CPUExecutionProvider"
    if res.provider == "CPUExecutionProvider":
        np.testing.assert_allclose(res.atom_values, cpu.atom_values, atol=1e-6)


class _NoCudaOrt:
    """onnxruntime as a CPU-only build sees it."""

    def __init__(self, real):
        self._real = real

    def get_available_providers(self):
        return ["CPUExecutionProvider"]

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_cpu_only_onnxruntime(scene, random_model, monkeypatch):
    import onnxruntime
    monkeypatch.setattr(network, "_ort", lambda: _NoCudaOrt(onnxruntime))
    refused(scene, f"defmap #1 structure #2 model {random_model} device gpu", "no CUDA provider")
    res = run(scene, f"defmap #1 structure #2 model {random_model} device auto", log=False)
    assert res.provider == "CPUExecutionProvider"


def test_failed_gpu_request_does_not_poison_auto(scene, random_model):
    with pytest.raises(UserError):
        run(scene, f"defmap #1 structure #2 model {random_model} device gpu", log=False)
    res = run(scene, f"defmap #1 structure #2 model {random_model}", log=False)
    assert len(res.atom_values) > 0


# ---------------------------------------------------------------------------------------------- memory

def test_map_too_large_is_refused_with_the_size_it_needs(cx, random_model):
    # a 400³ map at 6 Å (the values cost nothing: one broadcast float) needs a 1616³ lattice in voxel mode
    build_map(cx, MapSpec(shape_zyx=(400, 400, 400), step=(6.0, 6.0, 6.0), fill="lazy"), None)
    msg = refused(cx, f"defmap #1 model {random_model} level 0.5", "too large", "GiB")
    assert re.search(r"16\d\d×16\d\d×16\d\d lattice", msg), msg


@pytest.mark.parametrize("mode", ["structure", "voxel"])
def test_low_memory_refuses_before_allocating(scene, random_model, monkeypatch, mode):
    monkeypatch.setattr(pp, "available_memory", lambda: 200_000)  # 0.2 MB left
    target = "structure #2 " if mode == "structure" else "level 0.05 "
    refused(scene, f"defmap #1 {target}model {random_model}", "too large", "would need", "GiB")


def test_reading_a_huge_map_is_refused(scene, random_model, monkeypatch):
    calls = []
    real = pp.check_memory

    def tight(nbytes, what, fraction=0.8):
        calls.append(what)
        if what.startswith("reading"):
            raise MemoryError(f"{what} would need about {nbytes / 2**30:.1f} GiB of memory, but only 0.0 GiB is "
                              "available")
        return real(nbytes, what, fraction)
    monkeypatch.setattr(pp, "check_memory", tight)
    refused(scene, f"defmap #1 structure #2 model {random_model}", "reading", "voxels of map hostile")
    refused(scene, f"defmap #1 model {random_model} level 0.05", "reading map hostile", "40×40×40")
    assert calls and calls[0].startswith("reading")


def test_nan_far_from_the_atoms_does_not_matter(cx, random_model, tmp_path):
    """Structure mode reads only the atoms' neighbourhood: NaN padding elsewhere (tomograms) is not an error."""
    xyz = heavy_xyz_from_pdb(HELIX)
    v = build_map(cx, MapSpec(shape_zyx=(40, 40, 120), origin=tuple(xyz.mean(0) - 20)), xyz)
    v.full_matrix()[:, :, 80:] = np.nan  # the far end of the box, > 40 Å from every atom
    v.data.values_changed()
    (tmp_path / "h.pdb").write_text(HELIX)
    run(cx, f"open {tmp_path / 'h.pdb'}", log=False)
    res = run(cx, f"defmap #1 structure #2 model {random_model} color false", log=False)
    assert np.isfinite(res.atom_values).all() and res.outside_atoms == 0
    with pytest.raises(UserError, match="NaN"):
        run(cx, f"defmap #1 model {random_model} level 0.05", log=False)


def test_structure_mode_on_big_map_resamples_only_the_region(cx, random_model, tmp_path):
    """Structure mode converts only the atoms' neighbourhood of a big map to float32, not the whole map."""
    xyz = heavy_xyz_from_pdb(HELIX)
    v = build_map(cx, MapSpec(shape_zyx=(300, 300, 300), step=(1.0, 1.0, 1.0), fill="lazy", constant=1.0), xyz)
    assert v.full_matrix().strides == (0, 0, 0)
    (tmp_path / "h.pdb").write_text(HELIX)
    run(cx, f"open {tmp_path / 'h.pdb'}", log=False)
    import tracemalloc
    tracemalloc.start()
    with pytest.raises(UserError, match="constant"):
        run(cx, f"defmap #1 structure #2 model {random_model}", log=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 300**3 // 4, f"peak {peak / 2**20:.0f} MiB: the whole map was copied"


def test_dense_with_a_patch_only_model_is_refused(scene, tmp_path):
    p = _conv_model(tmp_path / "patch_only.onnx", 10, ["N", 1, "D", "H", "W"], fully_conv=False)
    refused(scene, f"defmap #1 model {p} level 0.05 dense true", "not fully convolutional", "dense false")
    res = run(scene, f"defmap #1 model {p} level 0.05 color false", log=False)
    assert res.voxels > 0
