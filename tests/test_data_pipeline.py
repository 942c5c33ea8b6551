"""`llmchain data prepare` end to end: outputs, bad input, --strict, workers, kill + resume, Ray."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from llmchain.data.filters import LengthFilter
from llmchain.data.pipeline import Pipeline
from llmchain.data.readers import iter_documents
from llmchain.data.steps import Document, Filter


def read_gz_lines(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(x) for f in sorted(folder.glob(pattern)) for x in gzip.open(f, "rt", encoding="utf-8") if x.strip()]


def output_of(out: Path) -> tuple[list, list, list]:
    """Documents, rejections and per-step stats: what must not depend on workers, executor or kills."""
    stats = json.loads((out / "stats.json").read_text())
    rejected = sorted(json.dumps(r, sort_keys=True) for r in read_gz_lines(out / "rejected", "*.jsonl.gz"))
    return list(iter_documents(out)), rejected, stats["steps"]


@pytest.fixture()
def bad_inputs(tmp_path) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "good.jsonl").write_text(json.dumps({"text": "A perfectly fine document about the weather."}) + "\n")
    (d / "mixed.jsonl").write_bytes(b'{"text": "ok line here"}\n{"text": "broken\n{"text": "bad \xff utf8"}\n')
    (d / "cols.csv").write_text("title,body\nhello,world\n")
    (d / "empty.txt").write_text("")
    (d / "notes.docx").write_bytes(b"PK\x03\x04")
    (d / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b not gzip at all")
    unreadable = d / "secret.jsonl"
    unreadable.write_text('{"text": "you cannot read me"}\n')
    unreadable.chmod(0)
    return d


def test_prepare_outputs_stats_and_manifest(tmp_path, shared_data):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "data", "prepare", str(shared_data / "opinosis"), str(shared_data / "web_warc_iana" / "iana.warc.gz"),
        "--out", str(out), "--text-field", "topic",
    )
    assert code == 0, err
    assert "kept" in stdout and "near_dedup" in stdout  # the summary table
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "documents" and manifest["counts"]["documents"] == stats["kept"]
    docs = list(iter_documents(out))
    assert len(docs) == stats["kept"] > 0 and all(set(d) == {"id", "text", "source", "meta"} for d in docs)
    # nothing silently lost: every step's docs in = out + removed, and read = kept + removed
    for s in stats["steps"]:
        assert s["in"] == s["out"] + sum(s["removed"].values())
    assert stats["documents_read"] == stats["kept"] + stats["removed"]
    rejected = read_gz_lines(out / "rejected", "*.jsonl.gz")
    assert len(rejected) == stats["rejected"]
    assert all(r["reason"] and r["step"] for r in rejected)
    assert any(r["reason"] == "http_status_302" for r in rejected)


def test_unreadable_file_is_rejected(tmp_path, bad_inputs, monkeypatch):
    secret = bad_inputs / "secret.jsonl"
    if os.access(secret, os.R_OK):  # root reads a chmod 000 file: it gets the error a user would get
        from llmchain.data import readers

        def denied(path, compression):
            if Path(path) == secret:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, compression)

        real = readers._open_binary
        monkeypatch.setattr(readers, "_open_binary", denied)
    stats = Pipeline([]).run([secret], tmp_path / "o")
    assert stats["unreadable"] == 1


def test_bad_input_is_counted_with_file_and_line_and_the_run_goes_on(tmp_path, bad_inputs):
    out = tmp_path / "out"
    code, _, err = run_cli("data", "prepare", str(bad_inputs), "--out", str(out), "--steps", "clean", "-q")
    assert code == 0, err
    rejected = read_gz_lines(out / "rejected", "*.jsonl.gz")
    where = {(Path(r["source"]).name, r["line"], r["reason"].split(":")[0].split(" ")[0]) for r in rejected}
    assert ("mixed.jsonl", 2, "invalid_json") in where
    assert ("mixed.jsonl", 3, "invalid_utf8") in where
    assert ("cols.csv", 1, "missing_column") in where
    assert ("empty.txt", 0, "empty_file") in where
    assert ("notes.docx", 0, "unknown_file_type") in where
    assert ("corrupt.jsonl.gz", 0, "unreadable_file") in where
    texts = sorted(d["text"] for d in iter_documents(out))
    assert "A perfectly fine document about the weather." in texts and "ok line here" in texts
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == stats["documents_read"] + stats["unreadable"]
    assert stats["rejected"] == len(rejected)


def test_strict_stops_at_the_first_bad_record_with_exit_code_2(tmp_path, bad_inputs):
    (bad_inputs / "notes.docx").unlink()
    code, _, err = run_cli("data", "prepare", str(bad_inputs / "mixed.jsonl"), "--out", str(tmp_path / "o"), "--strict")
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "mixed.jsonl:2: invalid_json" in err
    code, _, err = run_cli("data", "prepare", str(bad_inputs), "--out", str(tmp_path / "o2"), "--strict", "-q")
    assert code == 2 and err.startswith("error: ")


def test_missing_input_and_bad_config_are_one_line_errors(tmp_path):
    code, _, err = run_cli("data", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no such file" in err
    cfg = tmp_path / "data.yaml"
    cfg.write_text("steps: [clean, near_dedup, length]\n")
    (tmp_path / "a.txt").write_text("some text here")
    code, _, err = run_cli("data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "-c", str(cfg))
    assert code == 2 and "put dedup steps last" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    code, _, err = run_cli("data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "mine"))
    assert code == 2 and "not an output of `data prepare`" in err and (tmp_path / "mine" / "thesis.txt").exists()
    cfg.write_text("length: {min_chars: -1, typo: 3}\n")
    code, _, err = run_cli("data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "-c", str(cfg))
    assert code == 2 and "length.typo" in err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> list[str]:
    """One line-per-document file (~1 MB, cut into ~10 shards) with exact and near duplicates."""
    paras = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    docs = [" ".join(p.replace("\n", " ") for p in paras[i : i + 8]) for i in range(0, len(paras), 8)]
    docs += docs[:150] + [d.replace(" the ", " a ", 1) for d in docs[150:300]]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return [str(path), str(shared_data / "trec" / "test.tsv")]


ARGS = ["--text-unit", "line", "--shard-mb", "0.1", "-q"]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted single-worker local run everything else must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "out"
    code, _, err = run_cli("data", "prepare", *corpus, "--out", str(out), *ARGS)
    assert code == 0, err
    return output_of(out)


def test_reference_run_dedups_across_shards(reference, corpus, tmp_path):
    docs, rejected, steps = reference
    removed = {s["name"]: sum(s["removed"].values()) for s in steps}
    assert removed["exact_dedup"] >= 140 and removed["near_dedup"] >= 140
    sources = {Path(d["source"]).name for d in docs} | {Path(json.loads(r)["source"]).name for r in rejected}
    assert sources == {"corpus.txt", "test.tsv"}


def test_same_output_for_1_and_2_workers(reference, corpus, tmp_path):
    code, _, err = run_cli("data", "prepare", *corpus, "--out", str(tmp_path / "w2"), "--workers", "2", *ARGS)
    assert code == 0, err
    assert json.loads((tmp_path / "w2" / "stats.json").read_text())["shards"] >= 8
    assert output_of(tmp_path / "w2") == reference


def test_killed_run_resumes_to_the_same_output(reference, corpus, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llmchain", "data", "prepare", *corpus, "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / ".work").glob("*.done"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()  # it really stopped mid-way
    assert len(list((out / ".work").glob("*.done"))) >= 2
    code, _, err = run_cli("data", "prepare", *corpus, "--out", str(out), *ARGS)
    assert code == 0, err
    assert output_of(out) == reference


def test_ray_executor_gives_the_same_output(reference, corpus, tmp_path):
    import ray  # the dev extra installs it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, _, err = run_cli("data", "prepare", *corpus, "--out", str(tmp_path / "ray"), "--executor", "ray", *ARGS)
    finally:
        ray.shutdown()
    assert code == 0, err
    assert output_of(tmp_path / "ray") == reference


class KeepsQuestions(Filter):
    """A user-defined step, as one would write in a notebook."""

    name = "questions"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return doc.text.rstrip().endswith("?") or (False, "not_a_question")


def test_python_api_with_a_custom_step(tmp_path, shared_data):
    stats = Pipeline([LengthFilter(min_chars=10), KeepsQuestions()]).run(
        [shared_data / "trec" / "test.tsv"], tmp_path / "o", workers=2
    )
    assert stats["kept"] > 400 and stats["steps"][-1]["removed"].get("not_a_question", 0) > 0
    assert all(d["text"].endswith("?") for d in iter_documents(tmp_path / "o"))


def test_same_input_gives_byte_identical_stats_and_documents(tmp_path, shared_data):
    # Content files carry no timings, so a re-run with nothing changed leaves every hashed byte as it was
    # (a recipe then skips the stages downstream); timings live in manifest.json.
    src = shared_data / "tinyshakespeare" / "input.txt"
    outs = []
    for name in ("a", "b"):
        Pipeline([LengthFilter(min_chars=20)]).run([src], tmp_path / name)
        outs.append(tmp_path / name)
    from llmchain.artifacts import read_manifest, sha256_path

    assert (outs[0] / "stats.json").read_bytes() == (outs[1] / "stats.json").read_bytes()
    assert sha256_path(outs[0] / "documents") == sha256_path(outs[1] / "documents")
    assert "total" in read_manifest(outs[0])["seconds"]
