"""Render the production Postfix fragments in postfix-config/ with real values.

The placeholders are `{{ name }}`, the syntax Ansible's template module also reads, so one set
of files serves production and the devstack. One extra rule: a line naming a list-valued
variable is written once per item (the transport map has one line per ingest domain).
A placeholder left without a value is an error, never an empty string in a live config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
MAIN_CF_LINE = re.compile(r"^([a-z0-9_]+)\s*=")

Value = str | list[str] | tuple[str, ...]


class TemplateError(ValueError):
    """A placeholder has no value."""


def postfix_config_dir() -> Path:
    """postfix-config/ of a checkout, or the copy packaged inside an installed wheel."""
    checkout = Path(__file__).resolve().parents[2] / "postfix-config"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("orderflow_ingest") / "postfix-config"))


def render(text: str, variables: Mapping[str, Value], source: str = "template") -> str:
    out: list[str] = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        names = PLACEHOLDER.findall(line)
        missing = [name for name in names if name not in variables]
        if missing:
            raise TemplateError(f"{source}:{number}: no value for {{{{ {missing[0]} }}}}")
        lists = {name for name in names if not isinstance(variables[name], str)}
        if len(lists) > 1:
            raise TemplateError(f"{source}:{number}: more than one list placeholder")
        if not lists:
            out.append(PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), line))
            continue
        (list_name,) = lists
        for item in variables[list_name]:
            merged = {**variables, list_name: item}
            out.append(PLACEHOLDER.sub(lambda m, v=merged: str(v[m.group(1)]), line))  # type: ignore[misc]
    return "".join(out)


def render_file(name: str, variables: Mapping[str, Value]) -> str:
    path = postfix_config_dir() / name
    return render(path.read_text(encoding="utf-8"), variables, source=str(path))


def merge_main_cf(text: str, overrides: Mapping[str, str], heading: str) -> str:
    """Replace settings of a main.cf in place and append the new ones under `heading`.

    A setting's continuation lines (indented) are replaced with it, so no setting ends up
    defined twice (postconf would warn, and the later one would silently win).
    """
    pending = dict(overrides)
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if skipping and line[:1] in (" ", "\t") and line.strip():
            continue
        skipping = False
        match = MAIN_CF_LINE.match(line)
        if match and match.group(1) in pending:
            name = match.group(1)
            out.append(f"{name} = {pending.pop(name)}\n")
            skipping = True
            continue
        out.append(line)
    if pending:
        out.append(f"\n# --- {heading} ---\n")
        out.extend(f"{name} = {value}\n" for name, value in pending.items())
    return "".join(out)
