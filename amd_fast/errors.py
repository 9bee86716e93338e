"""What can go wrong, in two families, and how every command-line entry point reports it.

- :class:`InputError`: the user's input is wrong (a config key, a shard folder, a checkpoint file, a
  dataset listing). The message names the problem and the fix; the CLI prints it and exits 2.
- :class:`RunFailed`: the input was fine but the run could not finish (a non-finite loss, too many
  undecodable videos, a stalled rank, a full disk). The CLI prints the message and exits 1.
- ``KeyboardInterrupt`` (Ctrl-C) and SIGTERM (a scheduler's stop) exit 130 with one line; what was already
  written is kept. Trainers catch both signals themselves while they train (to save a checkpoint first),
  then hand them back here, so a final evaluation stops within seconds instead of running into SIGKILL.
- ``OSError`` (a folder that cannot be created, permissions, a full disk) exits 1 with its message.

Anything else is a bug and keeps its traceback (exit 1). The concrete errors subclass these where
they are raised (``ConfigError``, ``ShardError``, ``CheckpointError``, ...), so this module stays
standard-library only: ``amd_fast.bootstrap`` uses it before anything is installed.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

EXIT_CODES = {EXIT_OK: "ok", EXIT_FAILED: "the run failed", EXIT_BAD_INPUT: "bad input (config, data, files)",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C); rerun the same command to continue"}


class InputError(ValueError):
    """The user's input is wrong; the message names the problem and the fix (exit 2)."""


class RunFailed(RuntimeError):
    """The run could not finish; the message says why and what was kept (exit 1)."""


def run_cli(main: Callable[[], "int | None"], prog: str,
            interrupted_hint: str = "what was finished is kept; rerun the same command to continue") -> int:
    """Call ``main()`` and turn its outcome into the exit code every amd_fast command uses."""
    previous = _raise_on_sigterm()
    try:
        rc = main()
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as e:
        print(f"{prog}: failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # the environment refused (permissions, a missing folder, a full disk): no traceback
        print(f"{prog}: failed: {e}; fix the path or the machine and rerun the same command", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; {interrupted_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK if rc is None else int(rc)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _raise_on_sigterm():
    """SIGTERM raises KeyboardInterrupt (so it ends like Ctrl-C); returns the handler it replaced."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        return None
