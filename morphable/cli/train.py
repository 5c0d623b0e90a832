"""``morphable train RECIPE -o RUN_DIR``: train a recipe (config file + ``--set`` overrides), or resume a run."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.argument("recipe")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config (partial is fine: missing keys keep the recipe's defaults).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one key, e.g. --set optim.lr=1e-4 --set train.steps=2000 (repeatable).")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (must be empty or new, unless --resume).")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its newest checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(recipe: str, config_file: Path | None, overrides: tuple[str, ...], run_dir: Path, resume: bool,
          quiet: bool) -> None:
    """Train RECIPE into RUN_DIR: config.yaml, log.jsonl, images/, checkpoints/ (see docs/training.md)."""
    from morphable.train.distributed import is_main
    from morphable.train.trainer import train as run_training

    metrics = run_training(recipe, run_dir, config_file=config_file, overrides=overrides, resume=resume,
                           progress=not quiet)
    if not is_main():  # under torchrun, rank 0 reports
        return
    click.echo(f"run folder: {run_dir}")
    for key, value in metrics.items():
        click.echo(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
