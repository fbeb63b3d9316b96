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
    """Dotted names of every module under ``mrimsm/`` and ``cli/``."""
    names = []
    for top in ("mrimsm", "cli"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue  # runs the CLI when imported
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


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
    assert "mrimsm.train" in modules and "cli.main" in modules
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(modules)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{m}:\n{e}" for m, e in failures.items())
