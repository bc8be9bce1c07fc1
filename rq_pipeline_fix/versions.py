"""The version table: the RQ releases on which each defect was measured, read against the installed
one. Only reports need it (the probes decide what is patched), so it and ``packaging`` are loaded
at the first report, not at rq's import."""

from __future__ import annotations

import enum

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


class TableVerdict(str, enum.Enum):
    AFFECTED = "affected"
    UNAFFECTED = "unaffected"
    UNKNOWN = "unknown"  # newer than the last release measured


def table_verdict(affected: str, rq_version: str | None) -> TableVerdict:
    """What the table says of ``rq_version`` for a defect measured on the releases ``affected``
    (a specifier)."""
    from .detect import LAST_MEASURED_RQ  # beside the probes and the defects' specifiers

    try:
        version = Version(rq_version or "")
    except InvalidVersion:
        return TableVerdict.UNKNOWN
    if version > Version(LAST_MEASURED_RQ):
        return TableVerdict.UNKNOWN
    return TableVerdict.AFFECTED if version in SpecifierSet(affected) else TableVerdict.UNAFFECTED
