"""Command line of the analysis layer.

python -m analysis report --model camvid --data DIR --split val --out OUT [--limit N]
    [--probe-json FILE ...] [--probe-runs RUNDIR ...] [--device auto]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = {
    "report": "per-block metrics of every head over a dataset split, figures and report.md",
    "run-result": "the result file of one finished training run (fit, evaluate, per-stage metrics)",
    "claims": "claim tables over the committed run results (paired over seeds)",
    "results-md": "regenerate (or --check) the result tables of README.md and docs/results.md from the JSON",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``python -m analysis COMMAND ...``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m analysis COMMAND [options]\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:10s} {what}")
        print("\nrun 'python -m analysis COMMAND --help' for the options of a command")
        return 0 if args else 2
    if args[0] == "report":
        from .report import main as report_main

        return report_main(args[1:])
    if args[0] == "run-result":
        from .runs import main as runs_main

        return runs_main(args[1:])
    if args[0] == "results-md":
        from .results_md import main as results_main

        return results_main(args[1:])
    if args[0] == "claims":
        from .claims import main as claims_main

        return claims_main(args[1:])
    print(f"error: unknown command {args[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
