"""Organizational domains (RFC 7489 3.2) from the Public Suffix List.

DMARC's relaxed alignment and its policy fallback both need "the public suffix plus one
label". The list comes from Debian's `publicsuffix` package (the same file the distribution's
browsers and curl use, kept current by apt). Without it we fall back to the last two labels,
which is wrong for suffixes such as co.uk; a log line at start-up says so.
"""

from __future__ import annotations

import threading
from pathlib import Path

PSL_PATHS = (
    Path("/usr/share/publicsuffix/public_suffix_list.dat"),
    Path("/usr/share/publicsuffix/effective_tld_names.dat"),
)


class PublicSuffixList:
    """The ICANN and private rules of one list file: plain, wildcard (*.) and exception (!)."""

    def __init__(self, lines: list[str]):
        self.rules: set[str] = set()
        self.exceptions: set[str] = set()
        for line in lines:
            rule = line.strip().split(" ")[0].lower()
            if not rule or rule.startswith("//"):
                continue
            rule = rule.encode("idna").decode("ascii") if not rule.isascii() else rule
            if rule.startswith("!"):
                self.exceptions.add(rule[1:])
            else:
                self.rules.add(rule)

    def public_suffix(self, domain: str) -> str:
        labels = domain.lower().rstrip(".").split(".")
        # The longest matching rule wins; an exception rule ends the search one label short.
        for start in range(len(labels)):
            candidate = ".".join(labels[start:])
            if candidate in self.exceptions:
                return ".".join(labels[start + 1 :])
            wildcard = "*." + ".".join(labels[start + 1 :]) if start + 1 < len(labels) else None
            if candidate in self.rules or (wildcard and wildcard in self.rules):
                return candidate
        return labels[-1]  # the implicit "*" rule


_lock = threading.Lock()
_loaded: list[PublicSuffixList | None] = []


def load_default() -> PublicSuffixList | None:
    """The system list, read once per process; None when no list is installed."""
    with _lock:
        if not _loaded:
            psl = None
            for path in PSL_PATHS:
                if path.is_file():
                    psl = PublicSuffixList(path.read_text(encoding="utf-8").splitlines())
                    break
            _loaded.append(psl)
        return _loaded[0]


def organizational_domain(domain: str, psl: PublicSuffixList | None = None) -> str:
    """The public suffix plus one label; the domain itself if it is a public suffix."""
    domain = domain.lower().rstrip(".")
    psl = psl if psl is not None else load_default()
    labels = domain.split(".")
    if psl is None:
        return ".".join(labels[-2:])
    suffix = psl.public_suffix(domain)
    suffix_labels = suffix.count(".") + 1
    if len(labels) <= suffix_labels:
        return domain
    return ".".join(labels[-(suffix_labels + 1) :])
