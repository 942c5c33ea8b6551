"""`llmchain generate` continues a prompt with a saved model; a seed makes sampling reproducible."""

import pytest
import torch

from conftest import run_cli
from llmchain.model.io import save_model
from llmchain.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, shared_data):
    return tiny_model_dir(shared_data / "tinyshakespeare" / "input.txt", 512, max_position_embeddings=64)


def _gen(model_dir, *args):
    code, out, err = run_cli("generate", "--model", str(model_dir), *args)
    assert code == 0, err
    return out


def test_seed_makes_sampling_reproducible(model_dir):
    a = _gen(model_dir, "ROMEO:", "--seed", "1", "-n", "20", "--top-k", "50", "--top-p", "0.9")
    b = _gen(model_dir, "ROMEO:", "--seed", "1", "-n", "20", "--top-k", "50", "--top-p", "0.9")
    c = _gen(model_dir, "ROMEO:", "--seed", "2", "-n", "20", "--top-k", "50", "--top-p", "0.9")
    assert a == b and a != c


def _greedy_by_full_forward(model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation recomputed from scratch each step (no cache): the reference for the engine."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out]))[0][0, -1].argmax()))
    return out[len(ids):]


def test_greedy_cli_output_is_the_model_continuation(model_dir):
    from llmchain.model.io import load_model

    out = _gen(model_dir, "First Citizen:", "--temperature", "0", "-n", "12")
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    ids = tok.encode("First Citizen:", add_special_tokens=False)
    ref = _greedy_by_full_forward(model, ids, 12)
    new = ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
    assert out == tok.decode(new) + "\n"


def test_generate_stops_at_generation_config_eos_like_serve(model_dir, tmp_path):
    """`generate`, `chat` and the server share one list of stop ids: an id named only in
    generation_config.json ends the text in all three."""
    import json
    import shutil

    from llmchain.infer.engine import stop_token_ids
    from llmchain.model.io import load_model
    from llmchain.serve.worker import EngineSpec, build_engine

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    tok, model = load_tokenizer(d), load_model(d)
    torch.manual_seed(3)
    with torch.no_grad():  # a random model at std 0.02 repeats one token; larger weights give varied text
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else None
    save_model(model, d, tokenizer_dir=d)
    ids = tok.encode("First Citizen:", add_special_tokens=False)
    ref = _greedy_by_full_forward(model, ids, 12)
    stop_at = next(i for i in range(2, 12) if ref[i] not in ref[:i])  # a token first seen at step i
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [ref[stop_at]]}))
    assert ref[stop_at] in stop_token_ids(tok, model.config, d)
    want = tok.decode(ref[:stop_at])
    assert _gen(d, "First Citizen:", "--temperature", "0", "-n", "12") == want + "\n"
    _, engine = build_engine(EngineSpec(model_dir=str(d), dtype="float32"))
    from llmchain.infer.sampling import SamplingParams

    (c,) = engine.generate([ids], SamplingParams(max_tokens=12, temperature=0))[0]
    assert c.text == want and c.finish_reason == "stop"


def test_chat_mode_renders_the_template(model_dir):
    assert isinstance(_gen(model_dir, "hello", "--chat", "--seed", "0", "-n", "5"), str)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope"], "not a tokenizer directory"),
        (["--model", "{model}", "-n", "0"], "--max-new-tokens"),
        (["--model", "{model}", "--top-p", "1.5"], "--top-p"),
        (["--model", "{model}", "--device", "tpu9"], "is not a device"),
        (["--model", "{model}", "-n", "60", "x " * 10], "context (64)"),
    ],
)
def test_bad_flags_exit_2_with_one_line(model_dir, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, model=model_dir) for a in args]
    if not any(a.strip().startswith("x") for a in args):
        args.append("prompt")
    code, _, err = run_cli("generate", *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_tokenizer_but_no_weights_is_a_user_error(model_dir, tmp_path):
    import shutil

    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    code, _, err = run_cli("generate", "--model", str(tmp_path / "m"), "hi")
    assert code == 2 and "no model.safetensors" in err


def test_presets_table_lists_every_preset_with_params():
    from llmchain.model.presets import PRESETS

    code, out, _ = run_cli("presets", "--vocab-size", "32000")
    assert code == 0
    for name in PRESETS:
        assert name in out
    assert "1.1B" in out and "vocab 32,000" in out


def test_chat_engine_stops_where_the_server_engine_stops(serve_model_dir, tmp_path, monkeypatch):
    """`llmchain chat` builds its engine with the server's stop ids (EOS, generation_config.json's ids,
    end-of-turn tokens); it used to miss the last two."""
    import io
    import json
    import shutil

    from llmchain.infer.engine import Engine
    from llmchain.serve.worker import EngineSpec, build_engine

    d = tmp_path / "m"
    shutil.copytree(serve_model_dir(), d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 11]}))
    seen = {}
    start = Engine.start
    monkeypatch.setattr(Engine, "start", lambda self: seen.setdefault("eos", set(self.eos_ids)) and start(self))
    monkeypatch.setattr("sys.stdin", io.StringIO("/exit\n"))
    code, out, err = run_cli("chat", str(d))
    assert code == 0, err
    _, server_engine = build_engine(EngineSpec(model_dir=str(d), dtype="float32"))
    tok = load_tokenizer(d)
    assert {7, 11, tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id} <= seen["eos"]
    assert seen["eos"] == server_engine.eos_ids
