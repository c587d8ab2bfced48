#!/usr/bin/env python3
"""
The status page (src/obs/status_page.c) is a C string literal. Edit it as HTML:

    scripts/status_page.py extract > /tmp/status.html   # the page as served
    scripts/status_page.py embed /tmp/status.html       # back into the .c file

`embed` rewrites the literal (ASCII only, lines within 100 columns) and the
CSP's two SHA-256 hashes of the inline <script> and <style> blocks.
"""
import base64
import hashlib
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "obs" / "status_page.c"
START = "static const char status_html[] =\n"
WIDTH = 90  # escaped characters per literal, as clang-format leaves them


def literal_span(c):
    i = c.index(START) + len(START)
    j = c.index(";\n", i)
    return i, j


def extract(c):
    i, j = literal_span(c)
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', c[i:j]):
        out.append(re.sub(r"\\(.)", lambda e: {"n": "\n", "t": "\t"}.get(e.group(1), e.group(1)),
                          m.group(1)))
    return "".join(out)


def escape(line):
    return [{"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}.get(ch, ch) for ch in line]


def embed(c, page):
    assert page.isascii(), "the page must be ASCII"
    lines = []
    for line in page.splitlines(keepends=True):
        toks = escape(line)
        while toks:
            n, width = 0, 0
            while n < len(toks) and width + len(toks[n]) <= WIDTH:
                width += len(toks[n])
                n += 1
            lines.append('    "%s"' % "".join(toks[:n]))
            toks = toks[n:]
    i, j = literal_span(c)
    c = c[:i] + "\n".join(lines) + c[j:]
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        block = re.search(r"<%s>(.*?)</%s>" % (tag, tag), page, re.S).group(1)
        h = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        c = re.sub(r"(\"%s 'sha256-)[^']*'" % directive, lambda m: m.group(1) + h + "'", c)
    return c


def main():
    c = SRC.read_text()
    if sys.argv[1:] == ["extract"]:
        sys.stdout.write(extract(c))
    elif len(sys.argv) == 3 and sys.argv[1] == "embed":
        SRC.write_text(embed(c, Path(sys.argv[2]).read_text()))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
