"""Errors meant for people: one line each, saying where and what."""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line, exit 1."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a file: `path:line:col: field: message`."""

    file: str
    line: int
    col: int
    field: str
    message: str

    def __str__(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.file}:{self.line}:{self.col}:{field} {self.message}"

    def as_json(self) -> dict[str, str | int]:
        """One entry of `runner validate --json`."""
        return {"path": self.file, "line": self.line, "column": self.col, "field": self.field,
                "message": self.message}


class RecipeInvalid(UserError):
    """A recipe failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
