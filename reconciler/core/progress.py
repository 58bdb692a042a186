"""Progress of a long operation (loading 100k files, writing 300k entries), phase by phase,
for whoever shows it. The base shows nothing: piped output, logs and the daemon stay clean;
the command line hands in a terminal's (cli/progress.py) when stderr is one."""

from __future__ import annotations


class Progress:
    def phase(self, what: str, total: int | None = None) -> None:
        """A phase begins (and the one before ends): what, e.g. "loading 100,000 files";
        total: the count advance() goes up to, when there is one."""

    def advance(self, n: int) -> None:
        """n more of the phase's total are done."""

    def end(self) -> None:
        """No phase runs any more (before the operation prints its result)."""


QUIET = Progress()
