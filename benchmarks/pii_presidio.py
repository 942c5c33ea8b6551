"""Benchmark: our `pii` step against Microsoft Presidio's analyzer on a generated, labelled set of
English and Chinese sentences — precision and recall per PII type, for both.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/pii_presidio.py

The set (seeded): each sentence carries one candidate in an English or Chinese template — either PII
(e-mail; phone: US/UK formats in English, mobiles and landlines in Chinese; IPv4/IPv6; card numbers that
pass Luhn; Chinese resident IDs with a valid check character and birth date) or a near-miss that is not
PII (order numbers, dates, times, version strings, ISBNs, 16-digit numbers failing Luhn, IDs with a wrong
check character). A system finds type T in a sentence when it reports T over the candidate.

Presidio runs without an NLP engine, so nothing downloads a spaCy model: its regex/validator recognisers
(EmailRecognizer, PhoneRecognizer, IpRecognizer, CreditCardRecognizer) are called directly with
`nlp_artifacts=None` (no context words: that part needs spaCy). Two Presidio rows: its default phone
regions (US, UK, DE, FE, IL, IN, CA, BR) and the same with CN added. Presidio has no recogniser for
Chinese resident IDs. tldextract (used by Presidio's e-mail check) is pointed at its bundled suffix list,
so nothing reaches the network.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from datetime import date, timedelta

TYPES = ("email", "phone", "ip", "credit_card", "cn_id")

EN = {
    "email": [
        "Contact me at {} for the details.",
        "Send the report to {} before Friday.",
        "My address is {}.",
    ],
    "phone": ["Call me on {} after six.", "You can reach the office at {} anytime.", "Her number is {}."],
    "ip": [
        "The server at {} stopped answering.",
        "Requests from {} were blocked.",
        "Connect to {} over ssh.",
    ],
    "credit_card": [
        "Charge it to my card {} please.",
        "The card number is {} and it expires soon.",
        "Payment made with {} yesterday.",
    ],
    "cn_id": ["His ID number is {}.", "Resident ID {} was verified."],
    "near": [
        "Your order number {} has shipped.",
        "The meeting is on {} at noon.",
        "Upgrade to version {} today.",
        "Reference {} is attached.",
        "The ISBN is {}.",
        "Invoice {} is overdue.",
        "It ran at {} sharp.",
        "The total was {} units.",
    ],
}
ZH = {
    "email": ["请发邮件到{}联系我。", "我的邮箱是{}，有事找我。", "报告请发送至{}。"],
    "phone": ["我的手机号是{}，随时联系。", "请拨打{}咨询。", "联系电话：{}"],
    "ip": ["服务器{}无法访问。", "来自{}的请求被拦截了。", "请登录{}查看日志。"],
    "credit_card": ["请用信用卡{}付款。", "我的卡号是{}。", "银行卡{}已绑定。"],
    "cn_id": ["我的身份证号是{}。", "身份证号码：{}，请核对。", "申请人身份证{}已登记。"],
    "near": [
        "您的订单号{}已发货。",
        "会议定在{}举行。",
        "请升级到版本{}。",
        "发票编号{}已开具。",
        "时间是{}。",
        "共计{}件。",
    ],
}


def luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(rng: random.Random, valid: bool = True) -> str:
    prefix = rng.choice(["4", "51", "52", "53", "54", "55", "37", "6011"])
    length = 15 if prefix == "37" else 16
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    num = body + check
    sep = rng.choice(["", " ", "-"])
    if not sep:
        return num
    return sep.join(num[i : i + 4] for i in range(0, len(num), 4))


def cn_id(rng: random.Random, valid: bool = True) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    region = str(rng.randint(110000, 659999))
    born = date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 55))
    body = region + born.strftime("%Y%m%d") + f"{rng.randint(0, 999):03d}"
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    if not valid:
        check = rng.choice([c for c in "0123456789X" if c != check])
    return body + check


def email(rng: random.Random) -> str:
    user = rng.choice(["john.doe", "li.wei", "mary_k", "zhang3", "support", "a.b+news", "wang.fang88"])
    dom = rng.choice(["example.com", "mail.example.org", "qq.com", "163.com", "company.co.uk", "uni.edu.cn"])
    return f"{user}@{dom}"


def phone(rng: random.Random, lang: str) -> str:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    if lang == "en":
        area = str(rng.randint(201, 989))
        return rng.choice(
            [
                f"({area}) {rng.randint(200, 999)}-{d(4)}",
                f"{area}-{rng.randint(200, 999)}-{d(4)}",
                f"+1 {area} {rng.randint(200, 999)} {d(4)}",
                f"+44 20 7{d(3)} {d(4)}",
            ]
        )
    mobile = "1" + rng.choice("3456789") + d(9)
    return rng.choice(
        [
            mobile,
            f"{mobile[:3]} {mobile[3:7]} {mobile[7:]}",
            f"+86 {mobile}",
            f"0{rng.choice(['10', '21', '755'])}-{d(8)}",
        ]
    )


def ip(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))


def near_miss(rng: random.Random, lang: str, template: str) -> str:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    day = date(2000, 1, 1) + timedelta(days=rng.randint(0, 9000))
    if "order" in template or "订单" in template or "Invoice" in template or "发票" in template:
        return rng.choice([d(12), d(14), f"{day:%Y%m%d}{d(6)}", card(rng, valid=False).replace(" ", "")])
    if "meeting" in template or "会议" in template:
        return f"{day:%Y-%m-%d}" if lang == "en" else f"{day.year}年{day.month}月{day.day}日"
    if "version" in template or "版本" in template:
        return f"{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}"
    if "ISBN" in template:
        return f"978-{rng.randint(0, 9)}-{d(3)}-{d(5)}-{rng.randint(0, 9)}"
    if "ran at" in template or "时间" in template:
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    if "Reference" in template:
        return rng.choice([cn_id(rng, valid=False), card(rng, valid=False)])
    return f"{rng.randint(1, 9999)}.{d(2)}"


def candidate(rng: random.Random, kind: str, lang: str, template: str) -> str:
    if kind == "email":
        return email(rng)
    if kind == "phone":
        return phone(rng, lang)
    if kind == "ip":
        return ip(rng)
    if kind == "credit_card":
        return card(rng)
    if kind == "cn_id":
        return cn_id(rng)
    return near_miss(rng, lang, template)


def make_set(n: int, seed: int) -> list[dict]:
    """[{"lang", "type" (None for a near-miss), "span", "text"}]: n sentences per type and language."""
    rng = random.Random(seed)
    rows = []
    for lang, templates in (("en", EN), ("zh", ZH)):
        for kind in (*TYPES, "near"):
            for _ in range(n if kind != "near" else 2 * n):
                t = rng.choice(templates[kind])
                span = candidate(rng, kind, lang, t)
                rows.append(
                    {
                        "lang": lang,
                        "type": None if kind == "near" else kind,
                        "span": span,
                        "text": t.format(span),
                    }
                )
    return rows


# ------------------------------------------------------------------------------------- systems


def ours():
    from llmchain.data.pii import PIIRedactor

    red = PIIRedactor()

    def find(row: dict) -> set[str]:
        text, counts = red.redact(row["text"])
        # the candidate is found as type T when T was redacted and the candidate is gone from the text
        return {k for k in counts if row["span"] not in text}

    return find


def presidio(cn_phones: bool):
    import tldextract

    # Presidio's e-mail check calls tldextract.extract: use the bundled public-suffix list, no download
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    phone_kwargs = {}
    if cn_phones:
        phone_kwargs["supported_regions"] = [*PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS, "CN"]
    recognizers = [
        (EmailRecognizer(), "EMAIL_ADDRESS", "email"),
        (PhoneRecognizer(**phone_kwargs), "PHONE_NUMBER", "phone"),
        (IpRecognizer(), "IP_ADDRESS", "ip"),
        (CreditCardRecognizer(), "CREDIT_CARD", "credit_card"),
    ]

    def find(row: dict) -> set[str]:
        start = row["text"].index(row["span"])
        end = start + len(row["span"])
        found = set()
        for rec, entity, kind in recognizers:
            for r in rec.analyze(row["text"], [entity], None):
                if r.start < end and r.end > start:  # overlaps the candidate
                    found.add(kind)
        return found

    return find


def score(rows: list[dict], find) -> dict[tuple[str, str], dict[str, float]]:
    """{(lang, type): {precision, recall, tp, fp, fn}} over the sentences of that language."""
    c: Counter = Counter()
    for row in rows:
        got = find(row)
        for kind in TYPES:
            gold = row["type"] == kind
            c[(row["lang"], kind, "tp")] += gold and kind in got
            c[(row["lang"], kind, "fp")] += (not gold) and kind in got
            c[(row["lang"], kind, "fn")] += gold and kind not in got
    out = {}
    for lang in ("en", "zh"):
        for kind in TYPES:
            tp, fp, fn = (c[(lang, kind, x)] for x in ("tp", "fp", "fn"))
            out[(lang, kind)] = {
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="sentences per type and language (near-misses: 2n)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = make_set(args.n, args.seed)
    systems = {
        "llmchain pii": ours(),
        "Presidio (default regions)": presidio(False),
        "Presidio (+CN phones)": presidio(True),
    }
    results, secs = {}, {}
    for name, find in systems.items():
        t0 = time.perf_counter()
        results[name] = score(rows, find)
        secs[name] = time.perf_counter() - t0
    print(
        f"{len(rows)} sentences ({args.n} per type and language, {2 * args.n} near-misses per language), "
        f"seed {args.seed}\n"
    )
    names = list(systems)
    print("| lang | type | " + " | ".join(f"{n} P | {n} R" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for lang in ("en", "zh"):
        for kind in TYPES:
            cells = []
            for n in names:
                r = results[n][(lang, kind)]
                if r["tp"] + r["fp"] == 0 and (n.startswith("Presidio") and kind == "cn_id"):
                    cells += ["no recogniser", "—"]
                    continue
                cells += [
                    f"{r['precision']:.3f}" if r["precision"] is not None else "— (0 found)",
                    f"{r['recall']:.3f}" if r["recall"] is not None else "—",
                ]
            print(f"| {lang} | {kind} | " + " | ".join(cells) + " |")
    print()
    for n in names:
        fp = sum(r["fp"] for r in results[n].values())
        print(f"{n}: {fp} false positives in all, {secs[n]:.2f} s for {len(rows)} sentences")


if __name__ == "__main__":
    main()
