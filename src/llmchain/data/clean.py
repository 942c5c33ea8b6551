"""Text repair: unicode (ftfy, NFC), whitespace and control characters; and HTML → main text.

`CleanText` is the first step of the default pipeline. ftfy is slow on long texts, so it runs only
when a text contains characters that mojibake or odd unicode can be made of (pure ASCII text without
control characters is already as clean as ftfy would make it).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from llmchain.config import CleanConfig
from llmchain.data.steps import Document, Mapper, configure

# C0/C1 control characters except tab and newline (carriage returns become newlines first)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_INLINE_SPACE_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_SPACE_BEFORE_NL_RE = re.compile(r" +\n")
_MANY_NL_RE = re.compile(r"\n{3,}")
_NEEDS_CARE_RE = re.compile(r"[^\x20-\x7e\n]")


class CleanText(Mapper):
    """Repair mojibake and odd unicode (ftfy), normalise (NFC by default), drop control characters,
    collapse runs of spaces, strip line ends and keep at most one blank line between paragraphs.

    Counters: `fixed_unicode` (ftfy changed the text), `changed` (any change at all).
    """

    name = "clean"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `CleanConfig`'s (config.py): one definition.
        super().__init__()
        configure(self, CleanConfig, settings)

    def clean(self, text: str) -> str:
        """The cleaned text (pure function; the step counts what it changed)."""
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if _NEEDS_CARE_RE.search(text):
            if self.fix_unicode:
                import ftfy

                # keep full-width punctuation and curly quotes: they are correct in Chinese text
                fixed = ftfy.fix_text(
                    text,
                    normalization=self.normalization,
                    fix_character_width=False,
                    uncurl_quotes=False,
                    explain=False,
                )
                if fixed != text:
                    self.stats.counters["fixed_unicode"] += 1
                text = fixed
            elif self.normalization:
                text = unicodedata.normalize(self.normalization, text)
            if self.remove_control:
                text = _CONTROL_RE.sub("", text)
        if self.collapse_whitespace:
            # each regex runs only when its pattern can occur (most texts need none of them)
            if "  " in text or "\t" in text or not text.isascii():
                text = _INLINE_SPACE_RE.sub(" ", text)
            if " \n" in text:
                text = _SPACE_BEFORE_NL_RE.sub("\n", text)
            if "\n\n\n" in text:
                text = _MANY_NL_RE.sub("\n\n", text)
            if "\n " in text:
                text = "\n".join(line.strip() for line in text.split("\n"))
        return text.strip()

    def apply(self, doc: Document) -> Document:
        text = self.clean(doc.text)
        if text != doc.text:
            self.stats.counters["changed"] += 1
            doc.text = text
        return doc


def html_to_text(html: str | bytes, url: str | None = None) -> str:
    """Main text of an HTML page (trafilatura; boilerplate such as menus and footers removed).

    Returns "" when no main text is found (the caller rejects the record with that reason).
    """
    import logging

    import trafilatura

    # trafilatura logs every page it cannot parse at WARNING; the caller counts those instead
    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    text = trafilatura.extract(html, url=url, include_comments=False, include_tables=True, favor_recall=True)
    return text or ""
