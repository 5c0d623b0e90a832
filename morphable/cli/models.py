"""``morphable models``: list, fetch, describe, register and convert face models.

Thin wrappers over :mod:`morphable.models.registry` and :mod:`morphable.models.formats`; library errors
(:class:`~morphable.errors.MorphableError`) become one ``Error: ...`` line and exit status 1.
"""
from __future__ import annotations

from pathlib import Path

import click


@click.group()
def models() -> None:
    """Face models: the open ones (ict, sfm) and your own files (BFM, FLAME...)."""


@models.command("list")
def list_() -> None:
    """List the open models and the registered user models."""
    from morphable.models.registry import list_models

    for row in list_models():
        click.echo(f"{row['name']:<16} {row['kind']:<5} {row['status']:<12} {row['detail']}")


@models.command()
@click.argument("name")
def fetch(name: str) -> None:
    """Download (or take from MORPHABLE_MIRROR), verify and convert an open model."""
    from morphable.models.registry import converted_path, load_open_model

    model = load_open_model(name)
    click.echo(f"{name}: {model.n_vertices} vertices, converted to {converted_path(name)}")


@models.command()
@click.argument("name")
def info(name: str) -> None:
    """Describe a model (open-model name, registered name or file): counts, landmarks, regions."""
    from morphable.models.registry import load_model

    click.echo(load_model(name).describe())


@models.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
def add(name: str, path: Path) -> None:
    """Register your own model file (BFM .mat/.h5, FLAME .pkl, ...) under NAME, after validating it."""
    from morphable.models.registry import add_model

    model = add_model(name, path)
    click.echo(f"added {name}: {path} ({model.n_vertices} vertices, {model.n_identity} identity components)")


@models.command()
@click.argument("source")
@click.argument("out", type=click.Path(path_type=Path))
def convert(source: str, out: Path) -> None:
    """Convert a model (any loadable file, or a model name) to the native .npz format."""
    from morphable.models.formats.npz import save_npz
    from morphable.models.registry import load_model

    if out.suffix.lower() != ".npz":
        raise click.BadParameter(f"{out}: the output must be a .npz file", param_hint="OUT")
    model = load_model(source)
    save_npz(model, out)
    click.echo(f"wrote {out} ({model.n_vertices} vertices)")
