"""``python study/run.py``: run a noisy-transfer study (see ``--help`` and README)."""

from __future__ import annotations

import sys
from typing import Sequence

# Exit codes (README, "Exit codes"): what `ray job submit`, CI and shell scripts read.
EXIT_OK = 0  # every trial finished
EXIT_ERROR = 1  # a trial ended in error (everything was exported first)
EXIT_USAGE = 2  # bad input, refused before Ray starts
EXIT_UNLOGGED = 3  # every trial ended, parquet written, but the tracking server missed items: python -m study.replay
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT (128 + 2, the shell's convention); continue with --resume


def _stacks_on_sigusr2() -> None:
    """A driver that seems stuck says where: ``kill -USR2 <pid>`` prints every thread's stack to stderr.
    Not SIGUSR1: Ray Tune takes that one over while a study runs, to stop the run. Left out where
    stderr is no file (pytest's capture, a notebook): faulthandler writes to a descriptor."""
    import faulthandler
    import io
    import signal

    try:
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=False)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, run (or, with ``--print-configs``, print what would run); the exit code (above). A
    bad value is one line on stderr and exit code 2, before Ray starts."""
    from study.lock import StudyLocked
    from study.spec import StudyError, list_presets, parse_spec

    _stacks_on_sigusr2()
    try:
        spec = parse_spec(argv)
        if spec is None:
            print(list_presets())
            return 0
        if spec.print_configs:
            from study.show import trial_configs_text

            print(trial_configs_text(spec))
            return 0
        from study.driver import run_study

        outcome = run_study(spec)
    except (StudyError, StudyLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if outcome.status == "KILLED":
        return EXIT_INTERRUPTED
    if outcome.errored or outcome.status != "FINISHED":
        return EXIT_ERROR
    return EXIT_UNLOGGED if outcome.unlogged else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
