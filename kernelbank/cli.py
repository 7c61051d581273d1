"""The ``kernelbank`` command line: argparse in, one function call per subcommand out.

Each subcommand lives in :mod:`kernelbank.commands` as a module with two functions,
``add_parser(subparsers)`` and ``main(args) -> int``; this file only wires them up.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Sequence

from .commands import datasets_cmd  # noqa: F401  (one import line per subcommand module)
from .commands import train_cmd  # noqa: F401
from .commands import run_cmd, stage_cmds  # noqa: F401
from .commands import report_cmd  # noqa: F401
from .commands import pack_cmd  # noqa: F401

COMMANDS = (datasets_cmd, train_cmd, run_cmd, stage_cmds, report_cmd, pack_cmd,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelbank",
        description="Learn convolutional AR kernels and kernel banks from images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns its exit status.

    2 for bad input or a refused output (the message says why), 3 when a stage stalled
    waiting for resources the cluster does not have, 143 when stopped by SIGTERM and 130
    by Ctrl-C (the run is left resumable: rerun the same command).
    """
    from .io.storage import redact
    from .stages.common import Terminated, stop_on_sigterm
    from .stages.watchdog import StageStalled
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_on_sigterm():
            return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as error:
        print(f"kernelbank {args.command}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    except StageStalled as error:
        print(f"kernelbank {args.command}: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as stop:
        print(f"kernelbank {args.command}: stopped ({stop or 'interrupted'}); rerun the same "
              "command to resume", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


def console() -> None:
    """The ``kernelbank`` command: :func:`main`, then exit without the interpreter's final
    garbage collection, which has nothing left to free and took 0.7 s with torch loaded
    (1.3 s with the pipeline's modules) on every command."""
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    console()
