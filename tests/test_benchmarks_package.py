"""benchmarks/ is a package: every module imports, every script answers ``python -m
benchmarks.NAME --help`` with exit code 0, and the scripts share one parser base and no
``sys.path`` edits."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _modules() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def _scripts() -> list[str]:
    """The modules with a ``if __name__ == "__main__":`` block (the runnable ones)."""
    out = []
    for name in _modules():
        tree = ast.parse((BENCH / f"{name}.py").read_text())
        if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
            out.append(name)
    return out


def test_the_scripts_are_found():
    scripts = _scripts()
    assert {"csmri", "recon", "readme", "real_raw", "prior256", "train_speed"} <= set(scripts)
    assert not {"data", "runs", "tables", "figures", "arguments", "progress", "runner"} & set(scripts)


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__doc__, f"benchmarks/{name}.py has no docstring"


_CHILD = r"""
import json, os, runpy, sys
import numpy, torch  # the slow imports, once
results = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        sys.argv = [name, "--help"]
        code = 1
        try:
            runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)  # what python -m does
            code = "returned without exiting"
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = f"{type(exc).__name__}: {exc}"
        os.write(w, json.dumps(code).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        results[name] = json.loads(f.read() or '"no answer"')
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_script_answers_help():
    """``python -m benchmarks.NAME --help`` exits 0 for every script (run as ``-m`` runs a
    module, one forked child each)."""
    scripts = _scripts()
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(scripts)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    assert codes == {name: 0 for name in scripts}


def test_python_dash_m_from_the_repository_root():
    """The documented command, a real ``python -m`` from the repository root."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.readme", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--check" in out.stdout


def test_one_parser_base_and_no_path_edits():
    """Every script builds its parser with ``benchmarks.arguments.base_parser``; nothing in
    benchmarks/ edits ``sys.path``."""
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text, f"{path.name} edits sys.path"
        if path.stem in ("arguments",):
            continue
        assert "ArgumentParser(" not in text, f"{path.name}: build the parser with base_parser"
    for name in _scripts():
        assert "base_parser(" in (BENCH / f"{name}.py").read_text(), name


def test_base_parser_adds_only_what_a_script_asks_for():
    from benchmarks.arguments import base_parser

    ap = base_parser("doc", out=Path("r"), threads=2, seed=0)
    args = ap.parse_args([])
    assert (args.out, args.threads, args.seed) == (Path("r"), 2, 0)
    assert not hasattr(args, "device") and not hasattr(args, "quiet")
    args = base_parser("doc", device="cpu", quiet=True).parse_args(["--quiet", "--device", "cuda"])
    assert args.quiet and args.device == "cuda" and not hasattr(args, "out")


#: The shared modules (the rest of benchmarks/ are scripts).
SHARED = ("data", "runs", "tables", "figures", "arguments", "progress", "runner")


@pytest.mark.parametrize("name", SHARED)
def test_shared_functions_have_docstrings_and_annotations(name):
    tree = ast.parse((BENCH / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            assert ast.get_docstring(node), f"benchmarks/{name}.py: {node.name} has no docstring"
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            assert node.returns is not None and all(a.annotation is not None for a in args), \
                f"benchmarks/{name}.py: {node.name} lacks type hints"


def test_the_package_code_never_imports_benchmarks():
    """benchmarks/ sits above the CLI: mrimsm/ and cli/ import nothing of it."""
    bad = []
    for top in ("mrimsm", "cli"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                bad += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "benchmarks"]
    assert not bad, bad
