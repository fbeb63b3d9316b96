"""Every module of the package imports on its own, in a fresh interpreter.

A cycle between modules, or a module that works only when another one was
imported first, fails here. One helper process imports the third-party
libraries once (torch, numpy, ...: the slow part) and nothing of ``mrimsm``,
then forks one child per module; each child starts with no ``mrimsm`` module
loaded and imports exactly one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> list[str]:
    """Dotted names of every module under ``mrimsm/`` and ``cli/`` (the package
    ``mrimsm.cli``, see ``mrimsm/cli/__init__.py``)."""
    names = []
    for top in ("mrimsm", "cli"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue  # runs the CLI when imported
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts[0] == "cli":
                parts = ["mrimsm", *parts]
            name = ".".join(parts)
            if name not in names:
                names.append(name)
    return names


def module_path(module: str) -> Path:
    """The source file of a dotted module name (``mrimsm.cli.*`` lives in ``cli/``)."""
    parts = module.split(".")
    if parts[:2] == ["mrimsm", "cli"]:
        parts = parts[1:]
    path = ROOT / Path(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


_CHILD = r"""
import json, os, sys, traceback
import numpy, torch, h5py, yaml, typer  # the slow third-party imports, once
modules = json.loads(sys.argv[1])
assert not any(m == "mrimsm" or m.startswith(("mrimsm.", "cli.")) or m == "cli" for m in sys.modules)
failures = {}
for name in modules:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            msg = ""
        except BaseException:
            msg = traceback.format_exc(limit=-3)
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    _, status = os.waitpid(pid, 0)
    if msg or status:
        failures[name] = msg or f"exit status {status}"
print(json.dumps(failures))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_alone():
    modules = package_modules()
    assert "mrimsm.train" in modules and "mrimsm.cli.main" in modules
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(modules)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{m}:\n{e}" for m, e in failures.items())


# -- imports point down: the layers of docs/design.md ---------------------------------------

#: Each unit (a sub-package, or a module at the top of the package) and its layer;
#: a unit imports only from units of a lower layer (or from itself).
LAYERS: dict[str, int] = {
    "mrimsm.errors": 0, "mrimsm.limits": 1, "mrimsm.interrupt": 1, "mrimsm.utils": 2,
    "mrimsm.distributed": 3, "mrimsm.workers": 3, "mrimsm.physics": 3, "mrimsm.metrics": 3, "mrimsm.uncertainty": 3, "mrimsm.checkpoint": 3,
    "mrimsm.models": 4, "mrimsm.data": 4,
    "mrimsm.settings": 1, "mrimsm.sections": 2,
    "mrimsm.trainmethod": 5,
    "mrimsm.diffusion": 6, "mrimsm.baselines": 6,
    "mrimsm.methods": 7, "mrimsm.config": 8, "mrimsm.inference": 9,
    "mrimsm.train": 10, "mrimsm.recon": 10, "mrimsm.restore": 10,
    "mrimsm.cli": 11, "mrimsm.__main__": 12,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else "mrimsm"


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``path`` (function-level ones too),
    except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    import ast

    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m.split(".")[0] in ("mrimsm", "cli") and m != "mrimsm"]


def test_imports_point_down_the_layers():
    bad = []
    for module in package_modules() + ["mrimsm.__main__"]:
        if module == "mrimsm":
            continue
        path = module_path(module)
        src = _unit(module)
        assert src in LAYERS, f"{module}: put its unit {src} in LAYERS"
        for target, line in _imports(path, module):
            if target.split(".")[0] == "cli":  # the installed package has no top-level cli
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}; use mrimsm.cli or a relative import")
                continue
            dst = _unit(target)
            if dst == src or dst not in LAYERS:
                continue  # the unit itself, or a name from the package's __init__ (the version)
            if LAYERS.get(dst, -1) >= LAYERS[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {target}")
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def test_cli_is_the_package_mrimsm_cli():
    """``mrimsm.cli`` is the top-level ``cli/`` folder (the stub points there in a source
    checkout; a wheel maps it there with package-dir)."""
    import mrimsm.cli.main

    assert Path(mrimsm.cli.main.__file__).resolve() == ROOT / "cli" / "main.py"
