"""``mrimsm train CONFIG``: parse, show progress, call :func:`mrimsm.train.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mrimsm.sections import TrainConfig

from .options import device_option, setting_option, threads_option


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        config: Path = typer.Argument(..., help="YAML config (e.g. configs/tiny.yaml)."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Run directory (default: runs/<config name>)."
        ),
        resume: bool = typer.Option(
            False, "--resume",
            help="Continue from RUN_DIR/last.pt (refused when the data differ from the checkpoint's: "
                 "data.* keys, --data, the data set's prep parameters).",
        ),
        allow_data_change: bool = typer.Option(
            False, "--allow-data-change",
            help="With --resume: continue on other data than the checkpoint was trained on, with a note "
                 "(fine-tuning: copy a checkpoint to RUN_DIR/last.pt and resume).",
        ),
        max_steps: Optional[int] = setting_option(TrainConfig, "max_steps", "--max-steps",
                                                  help="Override train.max_steps."),
        method: Optional[str] = typer.Option(
            None, "--method", callback=_known_method,
            help="Training method: msm | ssdu (a name in the method table; default: the config's).",
        ),
        data: Optional[Path] = typer.Option(None, "--data", help="Prepared shard directory (overrides data)."),
        device: Optional[str] = device_option(),
        threads: Optional[int] = threads_option(),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Train a prior (MSM) or a baseline (SSDU) on prepared undersampled measurements.

        Bad input (config, data, checkpoint, a batch larger than the data set) is one 'error:' line, exit 2, before anything is written to the run directory. A shard that turns out truncated or locked mid-run stops with a checkpoint and the command that resumes; so does Ctrl-C (exit 130).
        """
        from mrimsm.config import load_config
        from mrimsm.utils import set_threads

        set_threads(threads)
        cfg = load_config(config, method=method)
        overrides = {}
        if max_steps is not None:
            overrides["train.max_steps"] = max_steps
        if data is not None:
            overrides["data.root"] = str(data)
            overrides["data.simulated"] = None
        if overrides:
            cfg = cfg.replace(**overrides)
        run_dir = out if out is not None else Path("runs") / config.stem

        from tqdm import tqdm

        from mrimsm.train import train

        def bar(**kw):
            return tqdm(dynamic_ncols=True, unit="step", **kw)

        train(
            cfg,
            run_dir,
            resume=resume,
            device=device,
            progress=None if quiet else bar,
            echo=lambda msg: typer.echo(msg, err=True),
            allow_data_change=allow_data_change,
        )


def _known_method(name: Optional[str]) -> Optional[str]:
    """``--method``: a name in :data:`mrimsm.methods.TRAINING_METHODS` (MrimsmError naming
    the known ones otherwise); checked while parsing, as the table is open to plugins."""
    if name is not None:
        from mrimsm.methods import training_method

        training_method(name)
    return name
