"""`lwdeploy` command line. It only parses arguments, calls pipeline stages and prints.

Subcommands live one per file in lwdeploy/commands/ and are imported lazily, so `lwdeploy --help`
does not pay for importing torch. A LwdeployError anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from .errors import LwdeployError

# name → "module:attribute" of a click command. Add a command by adding a file and a row here.
COMMANDS = {
    "models": "lwdeploy.commands.models:models",
    "export": "lwdeploy.commands.export:export",
    "prune": "lwdeploy.commands.prune:prune",
    "finetune": "lwdeploy.commands.finetune:finetune",
    "profile": "lwdeploy.commands.profile:profile",
    "compare": "lwdeploy.commands.compare:compare",
    "matrix": "lwdeploy.commands.matrix:matrix",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lwdeploy")
def cli():
    """Deploy lightweight vision networks to phones: zoo → prune → int8 → TFLite / Core ML / ExecuTorch,
    verified on the host, with per-layer latency reports that name the PyTorch modules."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="lwdeploy", standalone_mode=False)
    except LwdeployError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2 if e.exit_code in (1, 2) else e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
