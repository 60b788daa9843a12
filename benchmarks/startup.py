"""Start-up time of the quick commands (``--help``, ``options``, ``health``), this tree against another, side by side.

Each round runs every command once per tree, alternating, in a fresh Python; the table gives the median
wall time and whether torch was imported. ``health`` asks a port where nothing listens (the container's
HEALTHCHECK pays the same start-up when the service is up).

    python benchmarks/startup.py --compare-tree /tmp/before-99f468d --rounds 5 --out benchmarks/STARTUP.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = {"--help": ["--help"], "options": ["options"], "health": ["health", "--port", "9", "--timeout", "1"]}
PROBE = """
import json, runpy, sys
sys.argv = ["clip-image-encoder", *json.loads(sys.argv[1])]
try:
    runpy.run_module(MODULE, run_name="__main__")
except SystemExit:
    pass
print(json.dumps("torch" in sys.modules), file=sys.stderr)
"""


def cli_module(tree: Path) -> str:
    """The command line's module in that tree: ``cli/main.py`` since the layout in rooms, ``cli.py`` before."""
    return (
        "clip_image_encoder.cli.main"
        if (tree / "clip_image_encoder" / "cli" / "main.py").exists()
        else ("clip_image_encoder.cli")
    )


def measure(tree: Path, argv: list[str]) -> tuple[float, bool]:
    env = {**os.environ, "PYTHONPATH": str(tree), "JINA_OPTOUT_TELEMETRY": "1"}
    code = PROBE.replace("MODULE", repr(cli_module(tree)))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argv)], cwd="/tmp", env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    return seconds, json.loads(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-tree", type=Path, required=True, help="the other checkout (the baseline)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {f"before ({args.compare_tree.name})": args.compare_tree, "after (this tree)": HERE}
    times: dict[tuple[str, str], list[float]] = {}
    torch_imported: dict[tuple[str, str], bool] = {}
    for _ in range(args.rounds):
        for command, argv in COMMANDS.items():
            for label, tree in trees.items():
                seconds, imported = measure(tree, argv)
                times.setdefault((command, label), []).append(seconds)
                torch_imported[command, label] = imported
    rows = [
        "| command | tree | median s | min s | torch imported |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| `{command}` | {label} | {statistics.median(values):.2f} | {min(values):.2f} | "
            f"{'yes' if torch_imported[command, label] else 'no'} |"
            for (command, label), values in times.items()
        ),
    ]
    report = "\n".join(
        [
            "# Start-up of the quick commands, before and after",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
            f"{args.rounds} rounds, each command once per tree in turn, a fresh Python each time.",
            "",
            f"Command: `python benchmarks/startup.py --compare-tree {args.compare_tree} --rounds {args.rounds}`",
            "",
            *rows,
            "",
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
