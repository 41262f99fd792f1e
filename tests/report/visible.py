"""What a reader of report.html sees as text: every text node (style and script left out) and every image's alt text,
in document order, one chunk per line with whitespace collapsed. Markup, attributes, indentation and the base64
figures do not count, so a report rendered another way (f-strings, templates) can be compared with the one before."""

from __future__ import annotations

import re
from html.parser import HTMLParser

HIDDEN = {"style", "script"}
BUILT = re.compile(r"built \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")  # the one line that changes with every build


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HIDDEN:
            self.hidden += 1
        elif tag == "img":
            self.chunks.append(f"[image: {dict(attrs).get('alt') or ''}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if text and not self.hidden:
            self.chunks.append(text)


def visible_text(html: str) -> str:
    """The report's visible text, one chunk per line; the build time replaced by 'built <time>'."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    return BUILT.sub("built <time>", "\n".join(parser.chunks)) + "\n"
