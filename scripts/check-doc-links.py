#!/usr/bin/env python3
"""Checks the relative links of plico's Markdown pages: every linked file exists, and every
anchor (`page.md#some-heading`, `#some-heading`) names a heading of that page, by GitHub's
rules for heading ids. Links to web addresses are not checked.

    python3 scripts/check-doc-links.py            # README.md, *.md at the root, docs/*.md

Prints one line per broken link (file:line: link: why) and exits 1 if there is any.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# [text](target) or [text](target "title"); images too. Not reference-style links (unused here).
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+).*?\1")


def pages():
    """The Markdown files checked: those at the root and under docs/."""
    found = sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("**/*.md"))
    return [p for p in found if p.is_file()]


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading):
    """GitHub's id for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters and digits of any alphabet, and _
    return text.replace(" ", "-")


def anchors(path, cache={}):
    """Every heading id of a page; repeated headings get -1, -2, … as on GitHub."""
    if path not in cache:
        seen = {}
        ids = set()
        for _, line in prose_lines(path):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            ids.add(base if n == 0 else f"{base}-{n}")
        cache[path] = ids
    return cache[path]


def problems(page):
    for number, line in prose_lines(page):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not linked.exists():
                yield f"{where}: no such file"
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                yield f"{where}: no heading with id '{anchor}' in {linked.relative_to(ROOT)}"


def main():
    broken = [p for page in pages() for p in problems(page)]
    for line in broken:
        print(line)
    checked = len(pages())
    if broken:
        print(f"{len(broken)} broken link(s) in {checked} page(s)", file=sys.stderr)
        return 1
    print(f"links and anchors of {checked} page(s): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
