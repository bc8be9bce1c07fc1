"""Check the built sdist and wheel beyond `twine check`: what a release must carry.

    python tools/check_dist.py DIST_DIR

The version in both equals ``__version__`` of rq_pipeline_fix/__init__.py (its one source), the
licence file is inside both, the wheel has py.typed and the pytest entry point, and the metadata
declares the licence, the Python versions, pytest and typing. Exit 1 with the list of what is wrong.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = (
    "Framework :: Pytest",
    "Typing :: Typed",
    *(f"Programming Language :: Python :: 3.{minor}" for minor in range(9, 14)),
)


def source_version() -> str:
    text = (REPO / "rq_pipeline_fix" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit("no __version__ in rq_pipeline_fix/__init__.py")
    return match.group(1)


def problems(dist: Path) -> list[str]:
    version = source_version()
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"{dist}: expected one wheel and one sdist, found {len(wheels)} and {len(sdists)}"]
    found: list[str] = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        entry_points = next((wheel.read(n).decode() for n in names if n.endswith("entry_points.txt")), "")
    with tarfile.open(sdists[0]) as sdist:
        sdist_names = sdist.getnames()
    if metadata["Version"] != version:
        found.append(f"wheel version {metadata['Version']}, __version__ {version}")
    if f"-{version}" not in sdists[0].name:
        found.append(f"sdist {sdists[0].name} is not version {version}")
    if metadata["License-Expression"] != "MIT":
        found.append(f"License-Expression is {metadata['License-Expression']!r}, not MIT")
    if not any(name.endswith("licenses/LICENSE") for name in names):
        found.append("no LICENSE in the wheel")
    for required in ("LICENSE", "CHANGELOG.md", "README.md"):
        if not any(name.endswith(f"/{required}") and name.count("/") == 1 for name in sdist_names):
            found.append(f"no {required} in the sdist")
    if "rq_pipeline_fix/py.typed" not in names:
        found.append("no py.typed in the wheel")
    if "rq_pipeline_fix = rq_pipeline_fix.pytest_plugin" not in entry_points:
        found.append("no pytest11 entry point rq_pipeline_fix")
    declared = set(metadata.get_all("Classifier") or [])
    found.extend(f"classifier missing: {c}" for c in CLASSIFIERS if c not in declared)
    urls = metadata.get_all("Project-URL") or []
    if not any(url.startswith("Changelog, ") for url in urls):
        found.append("no Changelog project URL")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    found = problems(Path(argv[0]))
    for problem in found:
        print(f"dist: {problem}", file=sys.stderr)
    if not found:
        print(f"dist: sdist and wheel of {source_version()} carry what a release needs")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
