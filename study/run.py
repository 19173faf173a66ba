"""``python study/run.py``: run a noisy-transfer study (see ``--help`` and README)."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, run (or, with ``--print-configs``, print what would run). A bad value is one line
    on stderr and exit code 2, before Ray starts."""
    from study.spec import StudyError, list_presets, parse_spec
    from study.lock import StudyLocked

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

        run_study(spec)
    except (StudyError, StudyLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
