"""Our Llama and transformers' give the same logits on the same weights, both ways (fp32, 1e-5)."""

import json

import pytest
import torch
import transformers

from llmchain.model.io import load_model, save_model
from llmchain.model.llama import Llama, LlamaConfig
from llmchain.model.presets import PRESETS, preset_config

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_theta=5000.0)  # fmt: skip


@pytest.mark.parametrize("tie", [False, True])
def test_our_saved_model_loads_in_transformers_with_same_logits(tmp_path, tie):
    torch.manual_seed(0)
    ours = Llama(LlamaConfig(**TINY, tie_word_embeddings=tie)).eval()
    save_model(ours, tmp_path / "m")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_initialised_model_loads_into_ours_with_same_logits(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**TINY, attention_bias=False)
        hf = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**TINY, use_sliding_window=False)
        hf = transformers.Qwen2ForCausalLM(cfg)
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.config.qkv_bias == (kind == "qwen2")
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-5, rtol=0)


def test_presets_span_1m_to_1b_parameters():
    counts = {name: preset_config(name, 4096).num_params() for name in PRESETS}
    assert min(counts.values()) < 1.5e6 and max(counts.values()) > 0.9e9
    assert preset_config("nano", 4096).num_params() == Llama(preset_config("nano", 4096)).num_params()


def test_config_json_is_hf_llama(tmp_path):
    save_model(Llama(LlamaConfig(**TINY)), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (tmp_path / "m" / "manifest.json").is_file()


def test_bf16_weights_and_bf16_autocast_stay_close_to_fp32():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(**TINY)).eval()
    ids = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        ref, ref_loss = m(ids, targets=ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto, auto_loss = m(ids, targets=ids)
        half = Llama(LlamaConfig(**TINY)).to(torch.bfloat16).eval()
        half.load_state_dict(m.state_dict())
        low, _ = half(ids)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(auto.float(), ref, atol=0.05, rtol=0)
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0)
    assert abs(float(auto_loss) - float(ref_loss)) < 0.01


def test_peft_lora_targets_our_projections_by_their_hf_names():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    m = Llama(LlamaConfig(**TINY)).eval()
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        before = m(ids)[0]
        lora = get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False))
        after = lora(input_ids=ids)[0]
    assert (after - before).abs().max() > 1e-3


def test_the_plain_path_used_under_torch_compile_gives_the_same_logits(monkeypatch):
    import llmchain.model.llama as llama

    torch.manual_seed(0)
    m = Llama(LlamaConfig(**TINY)).eval()
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        eager, eager_loss = m(ids, targets=ids)
        monkeypatch.setattr(llama, "_compiling", lambda: True)
        plain, plain_loss = m(ids, targets=ids)
    torch.testing.assert_close(plain, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain_loss, eager_loss, atol=1e-5, rtol=0)


def test_dropout_is_training_only_and_off_by_default(tmp_path):
    torch.manual_seed(0)
    plain = Llama(LlamaConfig(**TINY))
    torch.manual_seed(0)
    dropped = Llama(LlamaConfig(**TINY, dropout=0.2))
    ids = torch.randint(0, 97, (2, 17))
    assert LlamaConfig().dropout == 0.0
    # dropout 0 in training mode: deterministic, no RNG drawn (seeded runs stay as before)
    state = torch.get_rng_state()
    a, b = plain.train()(ids)[0], plain(ids)[0]
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())
    # same weights: eval output is identical with and without dropout; training output is not
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(ids)[0], plain.eval()(ids)[0], atol=0, rtol=0)
        out1, out2 = dropped.train()(ids)[0], dropped(ids)[0]
    assert not torch.allclose(out1, out2) and not torch.allclose(out1, plain.eval()(ids)[0])
    # HF loads the saved config (it ignores the extra key) and gives the same eval logits
    save_model(dropped.eval(), tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dropout"] == 0.2
    assert load_model(tmp_path / "m").config.dropout == 0.2
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, dropped(ids)[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="dropout"):
        LlamaConfig(**TINY, dropout=1.0)
