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
    "mrimsm.errors": 0, "mrimsm.assets": 1, "mrimsm.limits": 1, "mrimsm.interrupt": 1, "mrimsm.utils": 2,
    "mrimsm.distributed": 3, "mrimsm.workers": 3, "mrimsm.physics": 3, "mrimsm.metrics": 3, "mrimsm.uncertainty": 3, "mrimsm.checkpoint": 3,
    "mrimsm.models": 4, "mrimsm.data": 4,
    "mrimsm.settings": 1, "mrimsm.sections": 2, "mrimsm.solver_settings": 3,
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


# -- no cycle among the modules of a unit ------------------------------------------------------


def _module_edges(module: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports (function-level imports too, relative
    ones resolved; not those under ``if TYPE_CHECKING:``). ``from P import name`` counts as an
    import of ``P.name`` when that is a module, else of ``P``."""
    import ast

    path = module_path(module)
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out.update(subs or {base})
            if len(subs) < len(node.names) and subs:
                out.add(base)  # names from the package's __init__ beside its submodules
    return {m for m in out if m in modules and m != module}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_import_cycle_inside_a_unit():
    """The modules of one unit (e.g. ``mrimsm.data.*``) import each other without a cycle,
    function-level imports included (between units, :data:`LAYERS` already forbids one)."""
    modules = set(package_modules())
    cycles = []
    for unit in sorted({_unit(m) for m in modules}):
        members = {m for m in modules if _unit(m) == unit}
        found = _cycle({m: _module_edges(m, members) for m in members})
        if found:
            cycles.append(" -> ".join(found))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


# -- function size -------------------------------------------------------------------------------

#: Most lines a function of ``mrimsm/`` may span (decorators and docstring included).
MAX_FUNCTION_LINES = 100
#: Files of ``mrimsm/`` not held to :data:`MAX_FUNCTION_LINES` (none; ``cli/`` lives outside
#: ``mrimsm/`` and is not checked here).
LONG_FUNCTION_EXEMPT: set[str] = set()


def _function_lengths(path: Path) -> dict[str, int]:
    """``{qualified name: lines}`` of every function and method in ``path``."""
    import ast

    out = {}

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    out[name] = child.end_lineno - start + 1
                walk(child, name + ".")

    walk(ast.parse(path.read_text()), "")
    return out


def test_no_function_over_100_lines():
    long = []
    for path in sorted((ROOT / "mrimsm").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in LONG_FUNCTION_EXEMPT:
            continue
        long += [f"{rel}: {name} ({n} lines)" for name, n in _function_lengths(path).items() if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_msm_sample_is_at_most_90_lines():
    lengths = _function_lengths(ROOT / "mrimsm" / "diffusion" / "sampler.py")
    assert lengths["msm_sample"] <= 90, lengths["msm_sample"]
