"""nbcnn.kernels, the public kernel API for plugins (docs/plugins.md, "Kernels for your layer")."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import naive
import numba
import numpy as np
import pytest

import nbcnn.kernels
from nbcnn.kernels import _checks, _jit, conv, engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", nbcnn.kernels.__all__)
def test_every_public_name_exists_and_is_documented(name):
    value = getattr(nbcnn.kernels, name)
    assert callable(value), name
    assert (value.__doc__ or "").strip(), f"nbcnn.kernels.{name} has no docstring"


def test_public_names_are_the_private_objects_re_exported():
    """One implementation each: a plugin calls exactly what nbcnn's own kernels call."""
    assert nbcnn.kernels.kernel is _jit.kernel
    assert nbcnn.kernels.set_threads is _jit.set_threads
    assert nbcnn.kernels.threading_info is _jit.threading_info
    assert nbcnn.kernels.float32_array is _checks.float32_array
    assert nbcnn.kernels.same_shape is _checks.same_shape
    assert nbcnn.kernels.conv_geometry is _checks.conv_geometry
    assert nbcnn.kernels.conv2d_forward is conv.conv2d_forward
    assert nbcnn.kernels.conv2d_backward is conv.conv2d_backward
    assert nbcnn.kernels.conv_backend is engine.backend
    with pytest.raises(AttributeError, match="no attribute 'conv3d_forward'"):
        nbcnn.kernels.conv3d_forward  # noqa: B018


def test_importing_nbcnn_kernels_imports_no_numba():
    code = (
        "import json, sys; import nbcnn.kernels; from nbcnn.kernels import __all__; "
        "print(json.dumps([m for m in ('numba', 'numpy', 'llvmlite') if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def _private_nbcnn_imports(source: str) -> list[str]:
    """The imports in ``source`` that reach into nbcnn's private names: a module path with a
    part starting with ``_`` (``nbcnn.kernels._jit``) or such a name imported from nbcnn."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "nbcnn" and any(part.startswith("_") for part in parts[1:]):
                found.append(f"line {node.lineno}: {module}")
    return found


def test_the_private_import_check_sees_the_old_imports():
    old = "from nbcnn.kernels import _checks\nfrom nbcnn.kernels._jit import kernel\n"
    assert _private_nbcnn_imports(old) == [
        "line 1: nbcnn.kernels._checks",
        "line 2: nbcnn.kernels._jit.kernel",
    ]
    assert _private_nbcnn_imports("from nbcnn.kernels import kernel\nimport nbcnn\n") == []


def test_depthwise_plugin_imports_no_private_nbcnn_module():
    package = ROOT / "plugins" / "nbcnn-depthwise" / "nbcnn_depthwise"
    sources = sorted(package.glob("*.py"))
    assert {path.name for path in sources} >= {"kernels.py", "layers.py"}
    offending = {
        path.name: found for path in sources if (found := _private_nbcnn_imports(path.read_text()))
    }
    assert offending == {}


@nbcnn.kernels.kernel
def _scale_rows(x, gamma, y):
    """y (N, C) = x * gamma, one prange iteration per row (writes only its own row)."""
    n_rows, channels = x.shape
    for n in numba.prange(n_rows):
        for c in range(channels):
            y[n, c] = x[n, c] * gamma[c]


@nbcnn.kernels.kernel
def _column_sums(x, partial):
    """partial (N, C) float64: row n of x into row n: the per-item buffer of a batch sum."""
    n_rows, channels = x.shape
    for n in numba.prange(n_rows):
        for c in range(channels):
            partial[n, c] += x[n, c]


def test_a_plugin_style_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    x = nbcnn.kernels.float32_array("x", rng.standard_normal((37, 5)), 2)
    gamma = nbcnn.kernels.float32_array("gamma", rng.standard_normal(5), 1)
    nbcnn.kernels.same_shape("gamma", gamma, (x.shape[1],))
    y = np.empty_like(x)
    _scale_rows(x, gamma, y)
    np.testing.assert_array_equal(y, x * gamma)
    partial = np.zeros(x.shape, dtype=np.float64)
    _column_sums(x, partial)
    np.testing.assert_allclose(partial.sum(axis=0), x.astype(np.float64).sum(axis=0), rtol=1e-12)
    assert _scale_rows.targetoptions["parallel"] and _scale_rows.targetoptions["nogil"]
    assert not _scale_rows.targetoptions.get("fastmath", False)


def test_kernel_accepts_options_that_replace_nbcnn_s():
    @nbcnn.kernels.kernel(parallel=False)
    def twice(x):
        return 2 * x

    assert twice(3) == 6
    assert twice.targetoptions.get("parallel", False) is False


def test_checks_reject_what_the_loops_cannot_take():
    with pytest.raises(TypeError, match="floating-point"):
        nbcnn.kernels.float32_array("x", np.zeros((2, 2), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        nbcnn.kernels.float32_array("x", np.zeros((2, 2)), 4)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        nbcnn.kernels.same_shape("b", np.zeros(4, np.float32), (3,))
    geometry = nbcnn.kernels.conv_geometry(
        (1, 5, 6, 2), (3, 3, 2, 4), (2, 1), (1, 1), ((1, 1), (0, 0))
    )
    assert geometry == ((2, 1), (1, 1), ((1, 1), (0, 0)), (3, 4))
    with pytest.raises(ValueError, match="input channels"):
        nbcnn.kernels.conv_geometry((1, 5, 6, 2), (3, 3, 3, 4), (1, 1), (1, 1), ((0, 0), (0, 0)))


@pytest.mark.parametrize("backend", ["engine", "blas"])
def test_public_conv2d_matches_the_naive_loops_on_both_backends(monkeypatch, backend):
    """The contract documented for plugins: Keras layout, float32 out, ReLU and db included."""
    monkeypatch.setenv("NBCNN_CONV", backend)
    assert nbcnn.kernels.conv_backend() == backend
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    geometry = ((2, 1), (1, 2), ((1, 1), (0, 1)))
    y = nbcnn.kernels.conv2d_forward(x, w, b, *geometry, relu=True)
    expected = np.maximum(naive.conv2d_forward(x, w, b, *geometry), 0.0)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = nbcnn.kernels.conv2d_backward(dy, x, w, *geometry, relu_output=y)
    dx_ref, dw_ref, db_ref = naive.conv2d_backward(np.where(y > 0, dy, 0.0), x, w, *geometry)
    for got, want in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_guides_example_kernels_run_and_match_numpy(tmp_path):
    """The kernels of docs/plugins.md's "Kernels for your layer", written to a module file as
    a plugin would (numba caches next to a source file) and run against NumPy."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    section = guide.split("<!-- fragment: nbcnn_scale/kernels.py", 1)[1]
    source = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    path = tmp_path / "guide_scale_kernels.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("guide_scale_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    gamma = rng.standard_normal(6).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(module.scale_forward(x, gamma), x * gamma)
    dx, dgamma = module.scale_backward(dy, x, gamma)
    np.testing.assert_array_equal(dx, dy * gamma)
    expected = (dy.astype(np.float64) * x).sum(axis=(0, 1, 2))
    assert dgamma.dtype == np.float32
    np.testing.assert_allclose(dgamma, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"gamma must have shape \(6,\)"):
        module.scale_forward(x, gamma[:5])
