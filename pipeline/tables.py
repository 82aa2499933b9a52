"""Figures of human and Markdown tables (no third-party import: command options load it at --help)."""

from typing import Any


def cell(value: Any, spec: str) -> str:
    """A figure of a human or Markdown table: ``value`` formatted by ``spec``, blank where it was not measured."""
    return "" if value is None else format(value, spec)
