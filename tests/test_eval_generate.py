"""`llmchain eval generate`: BLEU/chrF equal sacrebleu's own CLI, Chinese ROUGE, baselines, generation
with a (tiny, random) model through the chat template, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from llmchain.eval.metrics import generation_metrics


def _perturb(lines: list[str], k: int) -> list[str]:
    """Imperfect 'translations' from real sentences: drop the last word; swap two words every k-th line."""
    out = []
    for i, line in enumerate(lines):
        w = line.split()
        w = w[:-1] if len(w) > 2 else w
        if i % k == 0 and len(w) > 3:
            w[1], w[2] = w[2], w[1]
        out.append(" ".join(w))
    return out


def _sacrebleu_cli(refs: list[Path], hyp: Path, tokenize: str | None = None) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(hyp),
           "-m", "bleu", "chrf", "-b", "-w", "6"]  # fmt: skip
    if tokenize:
        cmd += ["-tok", tokenize]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    bleu, chrf = json.loads(out) if out.lstrip().startswith("[") else map(float, out.split())
    return float(bleu), float(chrf)


def test_bleu_chrf_equal_sacrebleu_cli_on_multi30k(shared_data, tmp_path):
    d = shared_data / "multi30k"
    ref = (d / "val.de").read_text(encoding="utf-8").splitlines()
    hyp = tmp_path / "hyp.de"
    hyp.write_text("\n".join(_perturb(ref, 3)) + "\n", encoding="utf-8")
    code, out, err = run_cli("eval", "generate", "--data", str(d / "val.en"), "--references", str(d / "val.de"),
                             "--predictions", str(hyp), "-o", str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    ours = report["systems"][0]
    bleu, chrf = _sacrebleu_cli([d / "val.de"], hyp)
    assert ours["bleu"] == pytest.approx(bleu, abs=1e-4) and ours["chrf"] == pytest.approx(chrf, abs=1e-4)
    assert 20 < ours["bleu"] < 95  # a real, non-trivial score
    # the lead (copy-the-English-source) baseline is a floor far below
    lead = next(s for s in report["systems"] if s["name"] == "lead")
    assert lead["bleu"] < 5 and lead["chrf"] < ours["chrf"]
    assert "BLEU" in out and "chrF" in out

    # two references per sentence: the second is another perturbation
    ref2 = tmp_path / "ref2.de"
    ref2.write_text("\n".join(_perturb(ref, 2)) + "\n", encoding="utf-8")
    refs = [[a, b] for a, b in zip(ref, _perturb(ref, 2), strict=True)]
    m = generation_metrics(hyp.read_text(encoding="utf-8").splitlines(), refs)
    bleu2, chrf2 = _sacrebleu_cli([d / "val.de", ref2], hyp)
    assert m["bleu"] == pytest.approx(bleu2, abs=1e-4) and m["chrf"] == pytest.approx(chrf2, abs=1e-4)


def test_rouge_on_chinese_is_not_zero(shared_data, tmp_path):
    from rouge_score import rouge_scorer

    rows = (shared_data / "csl_zh_title_summarization" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:51]
    titles = [r.split("\t")[1] for r in rows]
    preds = [t[: max(2, len(t) * 2 // 3)] for t in titles]  # the first two thirds of each title
    m = generation_metrics(preds, [[t] for t in titles])
    assert m["rouge1"] > 50 and m["rouge2"] > 40 and m["rougeL"] > 50
    assert "tok:zh" in m["bleu_signature"] and m["bleu"] > 10
    # rouge-score's own tokenizer drops every CJK character: the reason for ours
    default = rouge_scorer.RougeScorer(["rouge1"]).score(titles[0], preds[0])["rouge1"].fmeasure
    assert default == 0.0
    # the whole command on the TSV: abstract → title, lead baseline has overlap too
    code, _, err = run_cli("eval", "generate", "--data", str(shared_data / "csl_zh_title_summarization" / "dev.tsv"),
                           "--prompt-field", "abstract", "--reference-field", "title", "--predictions",
                           str(_write(tmp_path / "p.txt", _csl_preds(shared_data))), "-o", str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    lead = next(s for s in report["systems"] if s["name"] == "lead")
    assert lead["rouge1"] > 10 and report["n"] == 1000


def _csl_preds(shared_data) -> list[str]:
    rows = (shared_data / "csl_zh_title_summarization" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [r.split("\t")[1][::-1] for r in rows]  # titles reversed: same characters, scrambled order


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_exact_match_and_nearest_baseline(shared_data, tmp_path):
    src = shared_data / "self_instruct_human" / "seed_tasks_train.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()
    # instruction data as is ({instruction, input, output}): prompt = instruction + input, reference = output
    train, test = _write(tmp_path / "train.jsonl", lines[:150]), _write(tmp_path / "test.jsonl", lines[150:])
    pairs = [{"reference": json.loads(line)["output"]} for line in lines[150:]]
    preds = [p["reference"].upper() + " " if i % 2 == 0 else "no idea" for i, p in enumerate(pairs)]
    code, _, err = run_cli("eval", "generate", "--data", str(test), "--train", str(train), "--predictions",
                           str(_write(tmp_path / "p.txt", [p.replace("\n", " ") for p in preds])), "-o",
                           str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    names = [s["name"] for s in report["systems"]]
    assert names == ["predictions", "lead", "nearest"]
    # multi-line references were flattened in predictions, so exact match is about half (case/space-insensitive)
    assert 30 < report["systems"][0]["exact_match"] <= 52
    assert (tmp_path / "ev" / "outputs.jsonl").is_file() and (tmp_path / "ev" / "chrf.png").is_file()


def test_generate_with_a_tiny_model(tmp_path, shared_data, tiny_model_dir):
    model_dir = tiny_model_dir(shakespeare(shared_data), 300, eos_token_id=0, bos_token_id=0)
    data = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": "ROMEO:", "reference": "O, she doth teach"}),
                                         json.dumps({"prompt": "JULIET:", "references": ["a", "b"]})])  # fmt: skip
    code, out, err = run_cli("eval", "generate", "--model", str(model_dir), "--data", str(data),
                             "--max-new-tokens", "8", "-o", str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["config"]["chat_template"] is True  # our tokenizer carries a ChatML template
    assert len(report["samples"]) == 2 and isinstance(report["samples"][0]["model"], str)
    code, _, _ = run_cli("eval", "generate", "--model", str(model_dir), "--data", str(data), "--no-chat-template",
                         "--max-new-tokens", "4", "-o", str(tmp_path / "ev2"))  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "ev2" / "report.json").read_text())["config"]["chat_template"] is False


def shakespeare(shared_data: Path) -> str:
    """tinyshakespeare's start: enough text for a small BPE tokenizer (`tiny_model_dir`)."""
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:20000]


def test_one_line_errors(shared_data, tmp_path, tiny_model_dir):
    d = shared_data / "multi30k"
    short = _write(tmp_path / "short.txt", ["only one line"])
    cases = [
        ("--data", str(d / "val.en"), "--references", str(d / "val.de"), "--predictions", str(short)),
        ("--data", str(tmp_path / "missing.jsonl"), "--predictions", str(short)),
        ("--data", str(d / "val.en"), "--references", str(d / "val.de")),  # neither model nor predictions
        ("--data", str(_write(tmp_path / "bad.jsonl", ['{"prompt": "x"', ""])), "--predictions", str(short)),
    ]
    for args in cases:
        code, _, err = run_cli("eval", "generate", *args, "-o", str(tmp_path / "ev"))
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    # a model whose vocabulary is smaller than its tokenizer's
    bad = tiny_model_dir(shakespeare(shared_data), 300, model_vocab=280, eos_token_id=0, bos_token_id=0)
    pairs = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a", "reference": "b"})])
    code, _, err = run_cli("eval", "generate", "--model", str(bad), "--data", str(pairs), "-o", str(tmp_path / "e"))
    assert code == 2 and "do not belong together" in err and err.count("\n") == 1
