"""The README's performance table, made from bench/results.json: every figure with its unit,
next to its target where it has one, and the machine it was taken on. `make bench` runs it;
`python bench/table.py --check` fails when the README's table is not the one results.json
makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
README = ROOT / "README.md"
START = "<!-- bench-table:start (made by bench/table.py from bench/results.json) -->"
END = "<!-- bench-table:end -->"


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def target(figure: dict[str, Any]) -> tuple[str, str]:
    if "target" not in figure:
        return "", ""
    limit, goal, value = figure["limit"], figure["target"], figure["value"]
    sign = "≤" if limit == "max" else "≥"
    met = value <= goal if limit == "max" else value >= goal
    return f"{sign} {number(goal)} {figure['unit']}", "yes" if met else "**no**"


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Taken with `make bench` on {data.get('started', '?')[:10]}: a {m['cores']}-core "
        f"Linux virtual machine ({m['platform']}), Python {m['python']}; the whole suite "
        f"took {number(round(data.get('suite_seconds', 0)))} s.",
        "",
        "| benchmark | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for name, bench in data["benchmarks"].items():
        first = True
        for key, figure in bench["figures"].items():
            goal, met = target(figure)
            label = f"{name}" if first else ""
            lines.append(
                f"| {label} | {key.replace('_', ' ')} | {number(figure['value'])} "
                f"{figure['unit']} | {goal} | {met} |"
            )
            first = False
    lines.append("")
    lines.append("What each benchmark measures:")
    lines.append("")
    for name, bench in data["benchmarks"].items():
        lines.append(f"- `{name}`: {bench['about']}.")
    return "\n".join(lines)


def render(readme: str, data: dict[str, Any]) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(data)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    data = json.loads(RESULTS.read_text())
    readme = README.read_text()
    wanted = render(readme, data)
    if "--check" in argv:
        if wanted != readme:
            print("README.md's table is not the one bench/results.json makes: run bench/table.py")
            return 1
        return 0
    README.write_text(wanted)
    print(
        f"README.md: table of {sum(len(b['figures']) for b in data['benchmarks'].values())} figures"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
