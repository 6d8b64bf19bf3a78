"""Input problems, each naming the field it is about."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Issue:
    path: str  # e.g. "spec.steps[2].dependsOn[0]"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PlanningError(Exception):
    """The spec can never be planned as written (a permanent error, not a transient one)."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(set(issues))
        super().__init__("; ".join(str(i) for i in self.issues))
