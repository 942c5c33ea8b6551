"""Self-contained HTML heatmaps of token scores: no scripts, no external files, UTF-8, CJK fonts.

Tokens are shown as the text they cover (their character spans), never as tokenizer pieces, so a
byte-level BPE's half-characters (one CJK character split over two tokens) render as the character,
with the pieces' scores added up.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

STYLE = """
body { font-family: system-ui, "Noto Sans CJK SC", "Noto Sans CJK JP", "PingFang SC", "Microsoft YaHei",
       "Hiragino Sans", sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem; line-height: 1.9; }
.text { white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 3px; padding: 0 1px; }
.meta { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { padding: 0 0.6rem; text-align: left; }
section { border-top: 1px solid #ddd; margin-top: 1rem; }
"""


def _merge_spans(spans: Sequence[tuple[int, int]], scores: Sequence[float | None]) -> list[tuple[int, int, float | None]]:
    """One entry per distinct character span, in order; pieces sharing a span add their scores."""
    out: list[list] = []
    for (a, b), s in zip(spans, scores, strict=True):
        if a == b:
            continue  # a special token: no text
        if out and a < out[-1][1]:  # overlaps the previous piece (a split character)
            prev = out[-1]
            prev[1] = max(prev[1], b)
            prev[2] = None if prev[2] is None and s is None else (prev[2] or 0.0) + (s or 0.0)
        else:
            out.append([a, b, s])
    return [tuple(x) for x in out]


def heatmap(text: str, spans: Sequence[tuple[int, int]], scores: Sequence[float | None],
            signed: bool = True) -> str:  # fmt: skip
    """The text with each token's background coloured by its score: red for positive (for the
    label), blue for negative, white for none; scaled by the largest magnitude in this row."""
    merged = _merge_spans(spans, scores)
    top = max((abs(s) for _, _, s in merged if s is not None and math.isfinite(s)), default=0.0) or 1.0
    parts, pos = [], 0
    for a, b, s in merged:
        if a > pos:
            parts.append(html.escape(text[pos:a]))
        if s is None:
            parts.append(f'<span class="tok" title="–">{html.escape(text[a:b])}</span>')
        else:
            alpha = min(abs(s) / top, 1.0)
            rgb = "220,38,38" if (s >= 0 or not signed) else "37,99,235"
            parts.append(f'<span class="tok" style="background: rgba({rgb},{alpha:.3f})" '
                         f'title="{s:.4g}">{html.escape(text[a:b])}</span>')  # fmt: skip
        pos = max(pos, b)
    if pos < len(text):
        parts.append(html.escape(text[pos:]))
    return f'<div class="text">{"".join(parts)}</div>'


def page(title: str, sections: list[str]) -> str:
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")  # fmt: skip


def classifier_section(ex, baseline: list[tuple[str, float]] | None = None) -> str:
    """One explained text: its label and probability, a heatmap per method, the faithfulness table,
    and the TF-IDF+LR baseline's top word weights for the same label."""
    t = ex.tokens
    meta = f"label <b>{html.escape(ex.label)}</b> (p = {ex.prob:.3f})"
    if t.truncated_from is not None:
        meta += f"; <b>truncated</b>: the model reads {len(t.ids)} of {t.truncated_from} tokens"
    if ex.ig_delta is not None:
        meta += f"; IG convergence delta {ex.ig_delta:.2e} (of a total {ex.ig_total:+.3f})"
    shown = t.text[: max((b for _, b in t.spans), default=0)] if t.truncated_from else t.text
    rows = [f'<p class="meta">{meta}</p>']
    for m, scores in ex.scores.items():
        rows.append(f"<h3>{html.escape(m)}</h3>" + heatmap(shown, t.spans, scores))
    if ex.faithfulness:
        cells = "".join(f"<tr><td>{html.escape(m)}</td><td>{f['comprehensiveness']:.3f}</td>"
                        f"<td>{f['sufficiency']:.3f}</td></tr>" for m, f in ex.faithfulness.items())  # fmt: skip
        rows.append("<table><tr><th>method</th><th>comprehensiveness ↑</th><th>sufficiency ↓</th></tr>"
                    f"{cells}</table>")
    if baseline:
        cells = "".join(f"<tr><td>{html.escape(w)}</td><td>{v:+.3f}</td></tr>" for w, v in baseline[:12])
        rows.append("<h3>TF-IDF + LR baseline: n-gram weights for this label</h3>"
                    f"<table><tr><th>n-gram</th><th>tf-idf × coef</th></tr>{cells}</table>")
    return "<section>" + "".join(rows) + "</section>"


def lm_section(ex) -> str:
    rows = []
    meta = f"{len(ex.ids)} tokens"
    if ex.truncated_from is not None:
        meta += f"; <b>truncated</b> from {ex.truncated_from} to the model's context"
    if ex.continuation is not None:
        meta += f"; continuation: <b>{html.escape(ex.continuation)}</b>"
    if ex.ig_delta is not None:
        meta += f"; IG convergence delta {ex.ig_delta:.2e}"
    rows.append(f'<p class="meta">{meta}</p>')
    shown = ex.text[: max((b for _, b in ex.spans), default=0)] if ex.truncated_from else ex.text
    for m, scores in ex.scores.items():
        signed = m != "surprisal_bits"
        rows.append(f"<h3>{html.escape(m)}</h3>" + heatmap(shown, ex.spans, scores, signed=signed))
    return "<section>" + "".join(rows) + "</section>"
