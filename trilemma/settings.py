"""Settings a plugin component (a metric, an executor) declares for itself.

The command line gets one flag per declared setting; the harness parses and checks the value
and hands it to the component that declared it, and to no one else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trilemma.errors import TrilemmaError


@dataclass(frozen=True)
class Setting:
    """One declared option.

    ``parse`` turns the command-line text into the value (``str``, ``int``, ``float``, ``Path``
    or any callable); ``check`` may raise ``TrilemmaError`` for a bad value. ``flag`` defaults to
    ``--<owner>-<name>`` (the owner said once), and ``aliases`` are accepted too. ``protocol``
    says whether the value is part of the measurement protocol.
    """

    name: str
    parse: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    flag: str | None = None
    protocol: bool = True
    check: Callable[[Any], None] | None = None
    aliases: tuple[str, ...] = ()  # further flags for the same setting (e.g. an old name kept working)

    def flag_for(self, owner: str) -> str:
        """``flag``, else ``--<owner>-<name>``, the owner said once (``likelihood_images`` of the
        likelihood metric is ``--likelihood-images``)."""
        if self.flag:
            return self.flag
        prefix = owner.replace("-", "_") + "_"
        name = self.name.removeprefix(prefix) if self.name.startswith(prefix) else self.name
        return f"--{owner}-{name}".replace("_", "-")


def existing_file(value: Any) -> None:
    """A ``check`` for settings that name a file which must exist."""
    if value is not None and not Path(value).is_file():
        raise TrilemmaError(f"{value}: no such file")


def resolve_settings(owner: str, declared: Iterable[Setting], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` values (others at their defaults), checked; unknown names are an error."""
    by_name = {s.name: s for s in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise TrilemmaError(f"{owner}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(by_name)) or 'none'}")
    values = {}
    for name, setting in by_name.items():
        value = given.get(name, setting.default)
        if setting.check is not None and name in given:
            try:
                setting.check(value)
            except TrilemmaError as exc:
                raise TrilemmaError(f"{setting.flag_for(owner)} {exc}") from exc
        values[name] = value
    return values
