"""Organizational domains (RFC 7489 3.2) from the Public Suffix List.

DMARC's relaxed alignment and its policy fallback both need "the public suffix plus one
label". The list comes from Debian's `publicsuffix` package (the same file the distribution's
browsers and curl use, kept current by apt), at ORDERFLOW_PUBLIC_SUFFIX_LIST. There is no
fallback: "the last two labels" would make victim.co.uk and evil.co.uk one organization, so
evil.co.uk's SPF or DKIM pass would align with a From of victim.co.uk (issue 10, item 10).
The milter refuses to start without a usable list, and `doctor` checks for it.
"""

from __future__ import annotations

from pathlib import Path

SETTING = "ORDERFLOW_PUBLIC_SUFFIX_LIST"
# Rules a real list has; a file without them is truncated or not the list at all.
_SANITY_RULES = ("com", "uk", "co.uk")


class PublicSuffixListError(Exception):
    """The list is missing, unreadable or not a public suffix list; the message says how to
    fix it and names the setting."""


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


def load(path: str | Path) -> PublicSuffixList:
    """The list at `path`, checked to be one; PublicSuffixListError otherwise."""
    fix = f"install Debian's publicsuffix package or set {SETTING} to the list's path"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PublicSuffixListError(f"{SETTING}: {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise PublicSuffixListError(f"{SETTING}: cannot read {path} ({reason}); {fix}") from None
    try:
        psl = PublicSuffixList(text.splitlines())
    except UnicodeError:  # a rule IDNA cannot encode: a damaged file
        raise PublicSuffixListError(f"{SETTING}: {path} has a malformed rule; {fix}") from None
    if not all(rule in psl.rules for rule in _SANITY_RULES):
        raise PublicSuffixListError(
            f"{SETTING}: {path} is not a public suffix list (no rule for co.uk); {fix}"
        )
    return psl


def organizational_domain(domain: str, psl: PublicSuffixList) -> str:
    """The public suffix plus one label; the domain itself if it is a public suffix."""
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    suffix = psl.public_suffix(domain)
    suffix_labels = suffix.count(".") + 1
    if len(labels) <= suffix_labels:
        return domain
    return ".".join(labels[-(suffix_labels + 1) :])
