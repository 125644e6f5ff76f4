"""The ``cbm`` command: a thin dispatcher over the subcommands each stage registers.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands
and sets ``func`` on them. No logic lives here beyond wiring and logging set-up.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys

from cbm.errors import InputError, error_text

__all__ = ["main", "build_parser"]

_COMMAND_MODULES = (
    "cbm.data.cli",
    "cbm.demo.cli",
    "cbm.encoders.cli",
    "cbm.concepts.cli",
    "cbm.pipeline.cli",
    "cbm.run",
    "cbm.explain.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="cbm",
        description="Concept-bottleneck medical image classifiers: concepts -> features -> sparse head -> explanations.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cbm`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # `cbm run ...` is a Hydra app that parses its own overrides (`key=value`, `-m`, `--cfg job`).
    if argv and argv[0] == "run":
        from cbm.run import hydra_main

        try:
            return hydra_main(argv[1:])
        except KeyboardInterrupt:
            print(f"cbm run: interrupted{_RESUME['run']}", file=sys.stderr)
            return 130
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:  # `cbm cards | head`: the reader has what it wanted, no error to report
            if not _stdout_closed():
                raise  # another pipe or socket of the command's own: an error like any other
            return 141  # as a command killed by SIGPIPE (128 + 13)
    except (InputError, ValueError, OSError, RuntimeError) as exc:
        # user-facing errors stated plainly, on one line: a bad input file (cbm.errors.InputError: the
        # file, the field or line, the fix), a folder in the way, a bad path
        logging.getLogger("cbm").debug("details", exc_info=True)
        print(f"cbm {args.command}: error: {' '.join(error_text(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback
        resume = _RESUME.get(" ".join(filter(None, (args.command, getattr(args, "demo_command", None)))), "")
        print(f"cbm {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone; if so stdout is pointed at the null device, so that flushing
    it again at exit cannot raise. A pipe with no reader polls as an error (a failed write drops its
    buffer, so flushing again would not tell); where stdout has no descriptor, a flush is the test."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # stdout replaced (captured): ask it directly
        try:
            sys.stdout.flush()
            return False
        except BrokenPipeError:
            return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows): assume the pipe that broke was stdout's
        closed = True
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    return closed


# what an interrupted command keeps, where it keeps something a re-run builds on
_RESUME = {
    "features": "; finished cache shards are kept, and a re-run computes only the rest",
    "concepts": "; the classes already answered are kept in the store",
    "demo make": "; the images already drawn are kept, and a re-run draws only the rest",
    "run": "; the demo images drawn and the feature shards finished are kept, and a re-run computes only the rest",
}


if __name__ == "__main__":
    raise SystemExit(main())
