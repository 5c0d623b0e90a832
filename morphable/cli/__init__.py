"""The ``morphable`` command. One click group; each subcommand lives in its own module of this package
and is imported only when used (torch and the models load lazily, so ``morphable --help`` is fast).

Library code raises :class:`~morphable.errors.MorphableError` for user mistakes; here those become one
line on stderr and exit status 1 (a traceback only with ``--debug``).
"""
from __future__ import annotations

import importlib
import sys

import click

# subcommand name -> "module:function" inside morphable.cli
COMMANDS: dict[str, str] = {
    "models": "morphable.cli.models:models",
    "evaluate": "morphable.cli.evaluate:evaluate",
    "demo": "morphable.cli.demo:demo",
    "fit": "morphable.cli.fit:fit",
    "stn-fit": "morphable.cli.stn:stn_fit",
    "render": "morphable.cli.render:render",
    "train": "morphable.cli.train:train",
    "data": "morphable.cli.data:data",
    "track": "morphable.cli.track:track",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when the subcommand is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        from morphable.errors import MorphableError

        try:
            return super().invoke(ctx)
        except MorphableError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(err)) from None


@click.group(cls=LazyGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """3D face reconstruction with 3D morphable models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="morphable")


if __name__ == "__main__":
    sys.exit(main())
