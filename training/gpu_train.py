"""One command that continues a shipped prior on a GPU machine for a fixed wall-clock budget.

Made for the lent H100/H200 machines (Python 3.12, torch 2.11 preinstalled, no
package registry, 64 MiB of carried files, at most 8 files of 16 MiB back in
``$OUT``), and tested on CPU (tests/test_gpu_recipe.py). Three subcommands:

``bundle DIR`` (here, once, with network): what the project needs beyond that
machine's image: the pure-Python wheels of sigpy and nibabel (the versions
installed here) and the MNI152 T1 template (1.6 MB, the simulation's source,
laid out as ``DIR/nilearn/datasets/data/...`` so that ``mrimsm.data.simulate``
finds it without the 26 MB nilearn package). About 5 MB; ``DIR`` must be
git-ignored (``.gpu/`` is).

``train CONFIG STATE --out OUT --bundle DIR`` (on the GPU machine):

1. installs the bundle's wheels into a temporary folder (``pip --no-index``)
   and puts it and the template first on ``sys.path``;
2. simulates the config's training set from the template (``data.simulated``,
   the same code as ``mrimsm train``; nothing large travels), or reads ``--data``;
3. copies ``STATE`` (a resumable state, e.g. ``training/default_msm_last.pt``)
   into a run directory and resumes it with ``--batch`` examples per step, bf16
   autocast (``--precision``), for ``--minutes`` of training (the clock starts
   after the data is ready). The budget is met by running :func:`mrimsm.train.train`
   in chunks whose length comes from the measured steps/s, so every chunk ends
   with an ordinary checkpoint;
4. writes the new resumable state to ``OUT`` in parts of at most ``--part-mib``
   (16) MiB, ``state.pt.partNN``, with ``manifest.json`` (sizes, SHA-256, steps,
   timings) and ``log.jsonl``;
5. times sampling there (network evaluations per second, fp32 and bf16, 1 and 16
   images per call) into the manifest.

``check`` (here): whether the working tree plus ``.gpu`` fit the 64 MiB the run
tool sends (exit 1 when they do not).

``join FOLDER --to PATH`` (here): reassembles the parts listed in
``FOLDER/manifest.json``, checks every SHA-256 and writes ``PATH`` atomically;
``mrimsm train CONFIG --out RUN --resume`` then continues it
(``PATH`` = ``RUN/last.pt``), and ``data_scripts/ship_default_models.py`` ships it.

See training/README.md for the exact device command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: packages the training path needs that the GPU machine's image lacks (KINDS.md's list)
BUNDLE_PACKAGES = ("sigpy", "nibabel")
#: members of those pure-Python wheels left out of the bundle (test suites and their data:
#: 7 of nibabel's 17 MB; without them the tree and the bundle fit the 64 MiB carry)
BUNDLE_STRIP = {"nibabel": ("nibabel/tests/", "nibabel/*/tests/*")}
#: compiled packages the image lacks too (found on the first H100 run, 2026-11-27: sigpy
#: imports pywt at import time), fetched as CPython 3.12 manylinux wheels and stripped of
#: their test suites and sample data so the bundle stays inside the 64 MiB carry
BUNDLE_BINARY = {"pywavelets": ("pywt/tests/", "pywt/data/*.npz")}
MNI_REL = Path("nilearn") / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MANIFEST = "manifest.json"
PART_PREFIX = "state.pt.part"


def _say(msg: str) -> None:
    print(f"[gpu_train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- bundle (here) ---------------------------------------------------------------------


def cmd_bundle(args: argparse.Namespace) -> int:
    """Download the wheels and copy the template into ``args.dir``."""
    import importlib.metadata as md
    import importlib.util

    out = Path(args.dir)
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_PACKAGES:
        version = md.version(name)
        if not any(wheels.glob(f"{name}-{version}-*.whl")):
            _download_wheel(wheels, f"{name}=={version}", "--implementation", "py")
        for whl in wheels.glob(f"{name}-{version}-*.whl"):  # also a wheel an older bundle kept whole
            _strip_wheel(whl, BUNDLE_STRIP.get(name, ()))
    for name, drop in BUNDLE_BINARY.items():
        if any(wheels.glob(f"{name}-*-cp312-*.whl")):
            continue
        _download_wheel(wheels, name, "--platform", "manylinux_2_17_x86_64",  # any version with a cp312 wheel
                        "--platform", "manylinux2014_x86_64")
        for whl in wheels.glob(f"{name}-*-cp312-*.whl"):
            _strip_wheel(whl, drop)
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the MNI template comes from the nilearn package here: pip install --no-deps nilearn")
    src = Path(list(spec.submodule_search_locations)[0]).parent / MNI_REL
    dst = out / MNI_REL
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    _say(f"bundle {out}: {total / 2**20:.1f} MiB ({', '.join(p.name for p in sorted(wheels.glob('*.whl')))}, "
         f"{dst.name})")
    return 0


def _download_wheel(wheels: Path, requirement: str, *target: str) -> None:
    """``pip download`` one wheel for the GPU machine's Python 3.12 (``target``: the
    implementation or platform flags) into ``wheels``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", *target, "-d", str(wheels), requirement]
    _say(" ".join(cmd))
    subprocess.run(cmd, check=True)


def _strip_wheel(whl: Path, drop: tuple) -> None:
    """Rewrite ``whl`` without the members matching ``drop`` (folder prefixes ending in
    ``/`` or glob patterns) and their RECORD lines (pip installs what the archive holds).
    Atomic; a wheel with no such member is not rewritten."""
    import fnmatch
    import zipfile

    def dropped(name: str) -> bool:
        return any(name.startswith(d) if d.endswith("/") else fnmatch.fnmatch(name, d) for d in drop)

    with zipfile.ZipFile(whl) as src:
        if not any(dropped(name) for name in src.namelist()):
            return  # nothing to drop (or stripped before): the wheel stays as it is
    tmp = whl.with_name(whl.name + ".tmp")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(x for x in lines if not dropped(x.split(",")[0])) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(whl)


#: unshipped resumable states (data_scripts/ship_default_models.py --in-progress): not needed on
#: the device, and over the carry with them
IN_PROGRESS = "training/in_progress"


def travelling_bytes(repo: Path, carry: list) -> dict:
    """Bytes the run tool sends: tracked files, untracked files git does not ignore,
    and the carried paths."""

    def files(*git_args: str) -> list:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", *git_args],
                             capture_output=True, check=True).stdout
        return [repo / f for f in out.decode().split("\0") if f]

    tree = sum(p.stat().st_size for p in files() + files("--others", "--exclude-standard") if p.is_file())
    carried = 0
    for c in carry:
        path = repo / c
        items = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        carried += sum(p.stat().st_size for p in items)
    return {"tree": tree, "carry": carried, "total": tree + carried}


def cmd_check(args: argparse.Namespace) -> int:
    """Whether the working tree plus the carried bundle fit the run tool's 64 MiB."""
    sizes = travelling_bytes(Path(args.repo), [str(c) for c in args.carry])
    limit = 64 * 2**20
    ok = sizes["total"] <= limit
    print(f"working tree {sizes['tree'] / 2**20:.1f} MiB + carried {sizes['carry'] / 2**20:.1f} MiB = "
          f"{sizes['total'] / 2**20:.1f} MiB of 64 MiB: {'fits' if ok else 'TOO LARGE, the run tool refuses the call'}")
    aside = Path(args.repo) / IN_PROGRESS
    if not ok and aside.is_dir() and any(aside.iterdir()):
        print(f"the unshipped states in {IN_PROGRESS}/ are not needed on the device: move them aside for the "
              f"call (mv {IN_PROGRESS} /tmp/in_progress) and back after it (mv /tmp/in_progress {IN_PROGRESS})")
    return 0 if ok else 1


# -- train (there) ---------------------------------------------------------------------


def wheel_fits_this_python(name: str) -> bool:
    """Whether a wheel file name's Python tag (``py3``, ``cp312``, ``cp311.cp312`` ...) admits
    the running interpreter; with the stable ABI (``cp38-abi3``) any CPython of that major
    version from the tag's minor on. Only the Python and ABI tags are read; the platform
    tags are the bundle maker's business (manylinux x86_64, like both machines)."""
    parts = name[:-4].split("-")
    if len(parts) < 5:
        return True
    major, minor = sys.version_info[:2]
    admitted = {f"py{major}", f"py{major}{minor}", f"cp{major}{minor}"}
    stable_abi = "abi3" in parts[-2].split(".")
    for tag in parts[-3].split("."):
        if tag in admitted:
            return True
        since = tag[len(f"cp{major}"):]
        if stable_abi and tag.startswith(f"cp{major}") and since.isdigit() and int(since) <= minor:
            return True
    return False


def install_bundle(bundle: Optional[Path], site: Path) -> None:
    """Make the bundle importable: its wheels installed into ``site`` (no index, no
    dependencies), ``site`` and the bundle (the template's ``nilearn/`` folder, a
    namespace package holding only the data file) first on ``sys.path`` and on
    ``PYTHONPATH`` (spawned data-preparation workers)."""
    if bundle is None:
        return
    bundle = Path(bundle).resolve()
    if not bundle.is_dir():
        raise SystemExit(f"--bundle {bundle} is not a directory (make it with: gpu_train.py bundle {bundle})")
    wheels, skipped = [], []
    for w in sorted((bundle / "wheels").glob("*.whl")):
        (wheels if wheel_fits_this_python(w.name) else skipped).append(w)
    if skipped:  # e.g. the GPU image's cp312 pywavelets, run on this 3.11 CPU (which has its own)
        _say(f"skipped wheels built for another Python: {', '.join(w.name for w in skipped)}")
    paths = [str(bundle)]
    if wheels:
        site.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, wheels)]
        subprocess.run(cmd, check=True)
        paths.insert(0, str(site))
        _say(f"installed {', '.join(w.name for w in wheels)} into {site}")
    for p in reversed(paths):
        sys.path.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO)] + [os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )


class _InMemory:
    """A training set read once into memory (``(N)`` items of a few MB): the loader
    then only stacks tensors instead of reading HDF5 shards every step."""

    def __init__(self, dataset: Any):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.masks = getattr(dataset, "masks", None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


_CACHE: dict = {}


def _in_memory_data() -> None:
    """Route :func:`mrimsm.data.training_data.measurement_data` (the default
    ``TrainMethod.build_dataset``) through a per-process in-memory copy."""
    import mrimsm.trainmethod as tr

    if getattr(tr.measurement_data, "_in_memory", False):
        return
    original = tr.measurement_data

    def cached(cfg, dist_info):
        key = (cfg.data.root, str(cfg.data.simulated), cfg.data.split)
        if key not in _CACHE:
            bundle = original(cfg, dist_info)
            bundle.dataset = _InMemory(bundle.dataset)
            _CACHE[key] = bundle
        return _CACHE[key]

    cached._in_memory = True
    tr.measurement_data = cached


def _prepare_data(cfg, workers: int) -> float:
    """Build ``data.simulated`` (if any) before the clock starts; seconds taken."""
    t0 = time.perf_counter()
    if cfg.data.simulated is None:
        return 0.0
    from mrimsm import distributed
    from mrimsm.data.training_data import ensure_simulated_dataset

    root = ensure_simulated_dataset(cfg, distributed.DistInfo(), echo=_say, workers=workers)
    dt = time.perf_counter() - t0
    _say(f"training data ready in {root} ({dt:.0f} s)")
    return dt


def split_file(src: Path, out: Path, part_bytes: int) -> list[dict]:
    """Write ``src`` as ``out/state.pt.partNN`` of at most ``part_bytes``; their records."""
    parts = []
    with open(src, "rb") as f:
        k = 0
        while True:
            chunk = f.read(part_bytes)
            if not chunk:
                break
            name = f"{PART_PREFIX}{k:02d}"
            tmp = out / (name + ".tmp")
            tmp.write_bytes(chunk)
            tmp.replace(out / name)
            parts.append({"file": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
            k += 1
    return parts


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_train(args: argparse.Namespace) -> int:
    t_begin = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run_dir)
    install_bundle(args.bundle, Path(args.site))
    if args.cache is not None or not os.environ.get("MRIMSM_CACHE"):
        os.environ["MRIMSM_CACHE"] = str(args.cache or "/tmp/mrimsm_cache")

    import torch

    from mrimsm.checkpoint import LAST_NAME, load_checkpoint
    from mrimsm.config import load_config
    from mrimsm.train import train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        _say(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        _say(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")

    cfg = load_config(args.config)
    overrides: dict[str, Any] = {"train.sample_every": 0, "train.ckpt_every": 0, "train.keep_every": 0,
                                 "train.amp": args.precision == "bf16"}
    if args.data is not None:
        overrides.update({"data.root": str(args.data), "data.simulated": None})
    if args.lr is not None:
        overrides["train.lr"] = args.lr
    if args.loader_workers is not None:
        overrides["train.num_workers"] = args.loader_workers
    cfg = cfg.replace(**overrides)
    prep_s = _prepare_data(cfg, args.prep_workers)
    _in_memory_data()

    state = load_checkpoint(args.state)
    start = int(state["step"])
    del state
    if (run_dir / LAST_NAME).exists() and not args.keep_run:
        raise SystemExit(f"{run_dir} already holds a run; remove it or pass --keep-run to continue it")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / LAST_NAME).exists():
        shutil.copyfile(args.state, run_dir / LAST_NAME)
    step = int(load_checkpoint(run_dir / LAST_NAME)["step"])
    run_start = step  # differs from ``start`` when --keep-run continues an earlier call's run

    from mrimsm.distributed import DistInfo
    import mrimsm.trainmethod as tm

    n = len(tm.measurement_data(cfg, DistInfo()).dataset)  # the in-memory copy, read here before the clock
    batch = min(args.batch or cfg.train.batch_size, n)
    if batch != (args.batch or cfg.train.batch_size):
        _say(f"--batch {args.batch} > {n} training examples: using {batch}")
    cfg = cfg.replace(**{"train.batch_size": batch, "train.log_every": max(1, args.log_every)})
    amp = torch.bfloat16 if args.precision == "bf16" else None

    budget = float(args.minutes) * 60.0
    t0 = time.perf_counter()
    deadline = t0 + budget
    chunk = max(1, args.probe_steps)
    chunks = []
    while True:
        t_call = time.perf_counter()
        res = train(cfg.replace(**{"train.max_steps": step + chunk}), run_dir, resume=True, device=device,
                    echo=_say if args.verbose else (lambda m: None), amp_dtype=amp)
        now = time.perf_counter()
        done = res.step - step
        step = res.step
        in_loop = done / res.steps_per_s if done and math.isfinite(res.steps_per_s) else now - t_call
        overhead = max(0.0, (now - t_call) - in_loop)
        rate = res.steps_per_s if done else 0.0
        chunks.append({"steps": done, "seconds": round(now - t_call, 2), "steps_per_s": round(rate, 3),
                       "overhead_s": round(overhead, 2), "loss": res.losses[-1][1] if res.losses else None})
        _say(f"steps {step - done + 1}-{step}: {rate:.2f} steps/s, {rate * batch:.1f} images/s, "
             f"loss {chunks[-1]['loss']}, {deadline - now:.0f} s left")
        left = deadline - now - overhead - args.margin
        chunk = int(min(left, args.max_chunk_s) * rate) if rate > 0 else 0
        if chunk < 1:
            break
    train_s = time.perf_counter() - t0

    last = run_dir / LAST_NAME
    part_bytes = int(args.part_mib * 2**20)
    size = last.stat().st_size
    if size > args.max_out_mib * 2**20:
        raise SystemExit(f"the state is {size / 2**20:.1f} MiB, over --max-out-mib {args.max_out_mib}; "
                         f"make a compact one first")
    for old in out.glob(PART_PREFIX + "*"):
        old.unlink()
    parts = split_file(last, out, part_bytes)
    steps_run = step - run_start
    manifest = {
        "what": "resumable mrimsm training state, split; join with: python training/gpu_train.py join DIR --to PATH",
        "config": str(args.config), "state_in": str(args.state), "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "torch": torch.__version__, "precision": args.precision, "batch": batch,
        "state_in_step": start, "step_start": run_start, "step_end": step, "steps": steps_run,
        "train_seconds": round(train_s, 1), "prep_seconds": round(prep_s, 1),
        "total_seconds": round(time.perf_counter() - t_begin, 1),
        "steps_per_s": round(steps_run / train_s, 3) if train_s > 0 else None,
        "images_per_s": round(steps_run * batch / train_s, 1) if train_s > 0 else None,
        "chunks": chunks, "bytes": size, "sha256": _sha256(last), "parts": parts,
    }
    (out / (MANIFEST + ".tmp")).write_text(json.dumps(manifest, indent=1))
    (out / (MANIFEST + ".tmp")).replace(out / MANIFEST)
    if (run_dir / "log.jsonl").is_file():
        shutil.copyfile(run_dir / "log.jsonl", out / "log.jsonl")
    if args.sampling_calls > 0:  # after the state is safe in OUT: a failure here loses nothing
        try:
            manifest["sampling"] = time_sampling(args.config, device, args.sampling_batches, args.sampling_calls)
        except Exception as exc:  # report, do not fail the run
            manifest["sampling_error"] = f"{type(exc).__name__}: {exc}"
        (out / (MANIFEST + ".tmp")).write_text(json.dumps(manifest, indent=1))
        (out / (MANIFEST + ".tmp")).replace(out / MANIFEST)
    _say(f"trained steps {run_start + 1}-{step} ({steps_run} steps, batch {batch}) in {train_s:.0f} s: "
         f"{manifest['steps_per_s']} steps/s, {manifest['images_per_s']} images/s; "
         f"state {size / 2**20:.1f} MiB in {len(parts)} parts in {out}")
    return 0


def time_sampling(config: Path, device: str, batches: list, calls: int) -> list[dict]:
    """Network evaluations per second of the sampler's denoiser call, fp32 and bf16
    (``benchmarks/train_speed.py``'s ``bench_sample``: random weights of the config's size)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    ts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ts)
    rows = []
    for b in batches:
        for precision in ("fp32", "bf16"):
            r = ts.bench_sample(Path(config), calls, device, 8, int(b), precision)
            rows.append({"images_per_call": int(b), "precision": precision, "nfe_per_s": round(r["nfe_per_s"], 2)})
            _say(f"sampling: {b} images per call, {precision}: {r['nfe_per_s']:.1f} NFE/s")
    return rows


# -- join (here) ---------------------------------------------------------------------


def cmd_join(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"no readable {MANIFEST} in {folder}: {exc}") from None
    dst = Path(args.to)
    if dst.exists() and not args.force:
        raise SystemExit(f"{dst} exists; pass --force to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".joining")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for part in manifest["parts"]:
                data = (folder / part["file"]).read_bytes()
                if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise SystemExit(f"{folder / part['file']} does not match its manifest entry")
                f.write(data)
                h.update(data)
        if h.hexdigest() != manifest["sha256"]:
            raise SystemExit("the joined file does not match the manifest's sha256")
        tmp.replace(dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"{dst}: step {manifest['step_end']} ({manifest['steps']} steps on {manifest.get('gpu') or manifest['device']})")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bundle", help="download the wheels and copy the template (here, once)")
    b.add_argument("dir", type=Path, nargs="?", default=REPO / ".gpu")
    b.set_defaults(func=cmd_bundle)

    c = sub.add_parser("check", help="does the working tree plus the bundle fit the 64 MiB the run tool sends?")
    c.add_argument("--repo", type=Path, default=REPO)
    c.add_argument("--carry", type=Path, nargs="*", default=[Path(".gpu")])
    c.set_defaults(func=cmd_check)

    t = sub.add_parser("train", help="resume STATE with CONFIG for --minutes, write the state to --out")
    t.add_argument("config", type=Path)
    t.add_argument("state", type=Path, help="resumable state (e.g. training/default_msm_last.pt)")
    t.add_argument("--out", type=Path, required=True, help="where the parts go ($OUT on the device)")
    t.add_argument("--bundle", type=Path, default=None, help="folder made by `bundle` (carried as .gpu)")
    t.add_argument("--minutes", type=float, default=7.0, help="training wall-clock budget (after data prep)")
    t.add_argument("--batch", type=int, default=64, help="examples per step (capped at the training set)")
    t.add_argument("--lr", type=float, default=None, help="override train.lr")
    t.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast of the loss")
    t.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    t.add_argument("--data", type=Path, default=None, help="prepared shards instead of data.simulated")
    t.add_argument("--prep-workers", type=int, default=min(8, os.cpu_count() or 1))
    t.add_argument("--loader-workers", type=int, default=None, help="override train.num_workers")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--probe-steps", type=int, default=10, help="steps of the first chunk (measures steps/s)")
    t.add_argument("--max-chunk-s", type=float, default=150.0, help="longest chunk before re-measuring")
    t.add_argument("--margin", type=float, default=2.0, help="seconds kept free before the deadline")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--part-mib", type=float, default=16.0, help="largest part (the device returns <= 16 MiB files)")
    t.add_argument("--max-out-mib", type=float, default=60.0, help="refuse states larger than this")
    t.add_argument("--run-dir", type=Path, default=Path("/tmp/mrimsm_gpu_run"))
    t.add_argument("--keep-run", action="store_true", help="continue an existing --run-dir")
    t.add_argument("--site", type=Path, default=Path("/tmp/mrimsm_gpu_site"), help="where the wheels go")
    t.add_argument("--cache", type=Path, default=None,
                   help="MRIMSM_CACHE for the simulated data (default: $MRIMSM_CACHE, else /tmp/mrimsm_cache)")
    t.add_argument("--sampling-calls", type=int, default=20, help="timed sampler calls afterwards (0: none)")
    t.add_argument("--sampling-batches", type=int, nargs="+", default=[1, 16], help="images per sampler call")
    t.add_argument("--verbose", action="store_true")
    t.set_defaults(func=cmd_train)

    j = sub.add_parser("join", help="reassemble the parts of FOLDER into one state file (here)")
    j.add_argument("folder", type=Path)
    j.add_argument("--to", type=Path, required=True)
    j.add_argument("--force", action="store_true")
    j.set_defaults(func=cmd_join)

    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
