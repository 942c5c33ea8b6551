"""PII redaction: what must be replaced, and look-alikes that must stay."""

from __future__ import annotations

import pytest

from llmchain.data.pii import PIIRedactor, cn_id_valid, luhn_valid
from llmchain.data.steps import Document

R = PIIRedactor()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("write to john.doe+news@example.co.uk today", "write to <EMAIL> today"),
        ("邮箱：zhang_san@163.com。", "邮箱：<EMAIL>。"),
        ("请发邮件到mary_k@163.com联系我。", "请发邮件到<EMAIL>联系我。"),  # no space before or after
        ("我的手机号是+86 13799297595，随时联系。", "我的手机号是<PHONE>，随时联系。"),  # "86 1379..." passes Luhn
        ("call (415) 555-0132 now", "call <PHONE> now"),
        ("call 415-555-0132 now", "call <PHONE> now"),
        ("London +44 20 7946 0958.", "London <PHONE>."),
        ("手机13800138000联系", "手机<PHONE>联系"),
        ("电话：+86 138 0013 8000", "电话：<PHONE>"),
        ("座机 010-62345678", "座机 <PHONE>"),
        ("from 192.168.1.20 to 8.8.8.8", "from <IP_ADDRESS> to <IP_ADDRESS>"),
        ("host 2001:db8:85a3::8a2e:370:7334 up", "host <IP_ADDRESS> up"),
        ("link fe80::1ff:fe23:4567:890a", "link <IP_ADDRESS>"),
        ("visa 4111 1111 1111 1111 ok", "visa <CREDIT_CARD> ok"),
        ("mc 5555-5555-5555-4444", "mc <CREDIT_CARD>"),
        ("amex 378282246310005", "amex <CREDIT_CARD>"),
        ("身份证号11010519491231002X。", "身份证号<ID_NUMBER>。"),
        ("ID 440308199901011234 here", "ID <ID_NUMBER> here"),
    ],
)
def test_redacts(text, expected):
    assert R.redact(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on 2023-10-12 at 12:30:45.",  # date, time
        "Released on 12.10.2023 and 10/12/2023.",
        "Upgrade to version 1.2.3.4 or v10.0.0.1 today.",  # four-part versions look like IPv4
        "Python 3.11.7 and numpy 2.1.0",
        "Order number 4111111111111111 shipped.",  # a Luhn-valid number after "order"
        "订单号 13800138000 已发货",  # an order number shaped like a phone
        "Card 4111 1111 1111 1112 declined",  # fails Luhn
        "Invoice 20231012345678 paid",
        "ID 110105194912310021 is invalid",  # wrong check digit
        "pi is 3.14159265358979 and e is 2.718281828",
        "ratio 16:9 and std::vector and a::b",
        "ISBN 978-3-16-148410-0",
        "The ISBN is 978-0-646-35221-9.",  # passes Luhn, but no card starts with 9
        "population 1,234,567,890 in 2020",
    ],
)
def test_look_alikes_are_kept(text):
    assert R.redact(text) == (text, {})


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert not luhn_valid("0000000000000000")
    assert cn_id_valid("11010519491231002X") and not cn_id_valid("110105194912310021")


def test_step_counts_kinds_and_can_switch_kinds_off():
    step = PIIRedactor(phone=False)
    out = list(step.run(iter([Document("1", "a@b.io and 13800138000 and 10.0.0.1", "t", {})])))
    assert out[0].text == "<EMAIL> and 13800138000 and <IP_ADDRESS>"
    assert step.stats.counters == {"docs_redacted": 1, "email": 1, "ip": 1}
    assert step.stats.docs_in == step.stats.docs_out == 1
