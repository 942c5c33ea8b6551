"""PII redaction: e-mail, phone numbers, IPv4/IPv6, credit cards (Luhn), Chinese resident IDs.

Each kind is replaced by a placeholder token (`<EMAIL>`, `<PHONE>`, `<IP_ADDRESS>`,
`<CREDIT_CARD>`, `<ID_NUMBER>`). Patterns are deliberately strict so that look-alikes stay: a date
(2023-10-12), a version (v1.2.3.4), an order number, or a 16-digit number that fails the Luhn
check is not PII. Numbers are validated (Luhn, ID checksum and birth date, IPv6 parse), and a number
right after words such as "order", "version" or "订单" is left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from llmchain.config import PIIConfig
from llmchain.data.steps import Document, Mapper, configure

# Boundaries are ASCII-only on purpose: in Chinese text a number follows a CJK character directly
# ("电话13800138000"), and \w would count that character as part of a word.
_L = r"(?<![0-9A-Za-z_])"
_R = r"(?![0-9A-Za-z_])"
# ASCII local part: with \w, "请发邮件到a@b.com联系我" would glue the Chinese text to the address and miss it
EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*"
                      r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")
# 13-19 digits, optionally grouped by single spaces or dashes. The first digit is an issuer's (ISO/IEC 7812:
# 2 and 5 Mastercard, 3 Amex/JCB/Diners, 4 Visa, 6 Discover/UnionPay), so an ISBN-13 (978...) or "+86 138..."
# that happens to pass Luhn is not a card.
CARD_RE = re.compile(_L + r"(?<![.+-])[2-6](?:[ -]?\d){12,18}(?!-|\.\d)" + _R)
CN_ID_RE = re.compile(_L + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]" + _R)
IPV4_RE = re.compile(
    _L + r"(?<!\.)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.\d)" + _R
)
IPV6_RE = re.compile(r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z_:])")
PHONE_RE = re.compile(
    _L + r"(?<!\+)(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +44 20 7946 0958, +86 138 0013 8000
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (415) 555-0132
    r"|\d{3}[ .-]\d{3}[ .-]\d{4}"  # 415-555-0132
    r"|1[3-9]\d[ -]?\d{4}[ -]?\d{4}"  # Chinese mobile 13800138000
    r"|0\d{2,3}-\d{7,8}"  # Chinese landline 010-12345678
    r")(?!-|\.\d)" + _R
)
# words right before a number that make it something other than PII
_NOT_PII_BEFORE = re.compile(
    r"(?:(?<![A-Za-z])(?:order|invoice|ticket|tracking|ref(?:erence)?|serial|version|ver|v|isbn|issn|doi|sku|no|nr)"
    r"|#|订单|单号|编号|版本|发票)"
    r"\s*(?:number|no\.?|num|#|id)?\s*[:：#.]?\s*$",
    re.IGNORECASE,
)

_DIGIT_RE = re.compile(r"\d")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def luhn_valid(number: str) -> bool:
    """True when the digits of `number` pass the Luhn checksum (credit cards)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(set(digits)) == 1:  # 0000 0000 0000 0000 passes Luhn but is a placeholder
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    """True for an 18-character Chinese resident ID with a valid ISO 7064 MOD 11-2 check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(c) * w for c, w in zip(number[:17], _ID_WEIGHTS, strict=False))
    return _ID_CHECK[total % 11] == number[17].upper()


def _ipv6_valid(s: str) -> bool:
    if s.count(":") < 2 or not any(c.isalnum() for c in s):
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    # "1::" or "a::b" alone are too short to be anything but look-alikes (C++ scopes, ratios)
    return len(s.replace(":", "")) >= 4


class PIIRedactor(Mapper):
    """Replace PII with placeholder tokens; counts each kind (`email`, `phone`, ...) in the step stats."""

    name = "pii"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `PIIConfig`'s (config.py): one definition.
        super().__init__()
        configure(self, PIIConfig, settings)
        tokens = {
            "email": "<EMAIL>",
            "phone": "<PHONE>",
            "ip": "<IP_ADDRESS>",
            "credit_card": "<CREDIT_CARD>",
            "cn_id": "<ID_NUMBER>",
        }
        tokens.update(self.placeholders or {})
        # order matters: longer, validated numbers first, so a card or ID is not half-eaten as a phone
        table: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = [
            ("email", EMAIL_RE, None),
            ("cn_id", CN_ID_RE, cn_id_valid),
            ("credit_card", CARD_RE, luhn_valid),
            ("ip", IPV4_RE, None),
            ("ip", IPV6_RE, _ipv6_valid),
            ("phone", PHONE_RE, None),
        ]
        enabled = {kind: getattr(self, kind) for kind in ("email", "phone", "ip", "credit_card", "cn_id")}
        self._rules = [(kind, rx, check, tokens[kind]) for kind, rx, check in table if enabled[kind]]

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The redacted text and the number of replacements per kind."""
        counts: dict[str, int] = {}
        has_digit = _DIGIT_RE.search(text) is not None
        for kind, rx, check, token in self._rules:
            if kind == "email":
                if "@" not in text:
                    continue
            elif not has_digit and not (kind == "ip" and ":" in text):
                continue

            def sub(m: re.Match, kind=kind, check=check, token=token) -> str:
                s = m.group(0)
                if check is not None and not check(s):
                    return s
                if kind != "email" and _NOT_PII_BEFORE.search(m.string, max(0, m.start() - 24), m.start()):
                    return s
                counts[kind] = counts.get(kind, 0) + 1
                return token

            text = rx.sub(sub, text)
        return text, counts

    def apply(self, doc: Document) -> Document:
        text, counts = self.redact(doc.text)
        if counts:
            doc.text = text
            self.stats.counters["docs_redacted"] += 1
            self.stats.counters.update(counts)
        return doc
