"""Typed configs for every stage (pydantic), loaded from YAML and overridden by CLI flags.

Each stage's config class lives in its own section below. `load_config(path, Cls, **overrides)`
reads a YAML file, applies the flags the user set explicitly, and validates; a wrong field or value
becomes a `ConfigError` naming the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmchain.errors import ConfigError


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


C = TypeVar("C", bound=BaseModel)


def format_validation_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: field '{field}': {first['msg']}{extra}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file or bad YAML is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{loc}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Build `cls` from an optional YAML file plus overrides (None overrides are ignored).

    Flags win over the file, the file wins over defaults.
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path) if path else "options")) from None


# ---------------------------------------------------------------------------------------------
# Stage configs. Each section is owned by its stage; keep them next to each other so a reader sees
# every knob of the chain in one file.
# ---------------------------------------------------------------------------------------------

# --- data (data prepare) ---------------------------------------------------------------------

DEFAULT_DATA_STEPS = ["clean", "length", "gopher_quality", "gopher_repetition", "c4", "pii", "exact_dedup", "near_dedup"]


class DataReaderConfig(StageConfig):
    """Where the text is in each input format."""

    text_field: str = "text"  # JSONL / parquet field holding the text
    # JSONL / parquet field that is the document id (datatrove's default, "id"): strings as they are, integers
    # as their digits; records without it get FILE:LINE; ids must be unique. null: always FILE:LINE, the
    # field stays in meta.
    id_field: str | None = "id"
    columns: list[str] = ["text"]  # CSV/TSV column names (or 0-based indices) joined by newlines
    csv_header: bool = True  # False: CSV/TSV without a header row (use indices in `columns`)
    text_unit: Literal["file", "paragraph", "line"] = "file"  # .txt/.md: one document per ...
    warc_html_only: bool = True


class CleanConfig(StageConfig):
    fix_unicode: bool = True  # ftfy
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFC"
    remove_control: bool = True
    collapse_whitespace: bool = True


class LengthConfig(StageConfig):
    min_chars: int = 20
    max_chars: int | None = 1_000_000


class GopherQualityConfig(StageConfig):
    """Gopher (Rae et al. 2021) quality rules; defaults are the published values (as in datatrove)."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    segmenter: Literal["char", "jieba"] = "char"  # how CJK text is split into words


class GopherRepetitionConfig(StageConfig):
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    segmenter: Literal["char", "jieba"] = "char"
    cjk_ngram_scale: float = 1.5  # mostly-CJK text: character n-grams of round(1.5 · n)


class C4Config(StageConfig):
    """C4 line rules (Raffel et al. 2020); terminal-punctuation rule off by default, as in FineWeb.
    min_sentences is 1 (C4 used 5 for whole web pages; set 5 for web crawls)."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = False
    min_sentences: int = 1
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class LanguageConfig(StageConfig):
    languages: list[str] = ["en", "zh"]  # ISO 639-1 codes to keep (py3langid)
    min_score: float = 0.65


class PIIConfig(StageConfig):
    email: bool = True
    phone: bool = True
    ip: bool = True
    credit_card: bool = True
    cn_id: bool = True
    placeholders: dict[str, str] | None = None


class ExactDedupConfig(StageConfig):
    pass


class NearDedupConfig(StageConfig):
    """MinHash LSH. Word n-gram shingles (CJK: character n-grams); bands × rows hashes.
    28 × 4 finds ≥ 97 % of copies with 5 % of words changed; 14 × 8 is datatrove's (J ≳ 0.72)."""

    ngram: int = 5
    bands: int = 28
    rows: int = 4
    seed: int = 1
    verify_jaccard: bool = False  # exact Jaccard check of every candidate pair
    jaccard_threshold: float = 0.5


class CanaryConfig(StageConfig):
    """Secret-sharer canaries (Carlini et al. 2019) that `data prepare` plants to measure memorisation later
    (`llmchain privacy audit`). Each canary is a fixed template with a per-canary key and a random secret;
    `count` canaries are planted at each entry of `copies`, and `count` more are kept unplanted as controls.
    The secrets are recorded in OUT/canaries.json only, never in the documents."""

    count: int = Field(0, ge=0, description="canaries per copy count (0: none)")
    copies: list[int] = Field([1, 10, 100], min_length=1, description="copies planted of each group's canaries")
    secret_length: int = Field(6, ge=1, le=24, description="characters of the random secret")
    alphabet: Literal["digits", "letters", "alnum"] = "digits"  # digits: 0-9; letters: a-z; alnum: both
    languages: list[Literal["en", "zh"]] = Field(["en", "zh"], min_length=1)  # templates, used in turn
    seed: int = 0

    @field_validator("copies")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"copies must be distinct whole numbers ≥ 1, got {v}")
        return v


class DataConfig(StageConfig):
    """`llmchain data prepare`: readers, the ordered step list with each step's thresholds, execution."""

    steps: list[str] = DEFAULT_DATA_STEPS
    reader: DataReaderConfig = DataReaderConfig()
    clean: CleanConfig = CleanConfig()
    length: LengthConfig = LengthConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    c4: C4Config = C4Config()
    language: LanguageConfig = LanguageConfig()
    pii: PIIConfig = PIIConfig()
    exact_dedup: ExactDedupConfig = ExactDedupConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()
    canaries: CanaryConfig = CanaryConfig()  # planted after the per-document steps, before dedup
    workers: int = 1
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    shard_mb: float = 16.0  # uncompressed line-based files are cut into shards of about this size
    strict: bool = False  # stop at the first unreadable record (exit code 2)


# --- tokenizer + pack ------------------------------------------------------------------------


class TokenizerConfig(StageConfig):
    """`llmchain tokenizer train`: byte-level BPE."""

    vocab_size: int = Field(4096, description="vocabulary incl. 256 bytes + 4 specials")
    min_frequency: int = Field(2, ge=1, description="a merge must occur at least this often")
    max_documents: int | None = Field(None, ge=1, description="train on the first N documents only")
    model_max_length: int = Field(2048, ge=1, description="recorded in tokenizer_config.json")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="leave out what `data pack` with the same "
                                "val_fraction and split_by sends to val: train on the train split only")
    split_by: Literal["documents", "chars"] = Field("documents", description="as in PackConfig")


class PackConfig(StageConfig):
    """`llmchain data pack`: documents → flat token shards (train/val)."""

    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of documents (or chars) for val")
    split_by: Literal["documents", "chars"] = Field(
        "documents", description="documents: every k-th document to val; chars: the last part of each document"
    )
    workers: int | None = Field(None, ge=1, description="tokenizer processes (default: CPU count, ≤ 8)")
    shard_tokens: int = Field(100_000_000, ge=1024, description="tokens per .bin file before starting the next")


# --- pretrain --------------------------------------------------------------------------------


def parse_duration(value: Any) -> float | None:
    """Seconds from 300, "300", "90s", "5m", "1.5h" or "1h30m"; ValueError otherwise."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"{value!r} is not a duration (examples: 300, 90s, 5m, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


class TrainConfig(StageConfig):
    """Knobs of the one training loop (`llmchain.train.loop.fit`), shared by pretraining and fine-tuning."""

    seed: int = Field(1337, description="data order and init are pure functions of (seed, step, rank)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (the LR schedule spans them)")
    max_time: float | None = Field(None, gt=0, description="wall-time budget in seconds or 90s/5m/1h")
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr: float | None = Field(None, ge=0, description="LR at the end of the cosine (default lr/10)")
    warmup_steps: int = Field(100, ge=0, description="linear warmup from 0 to lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay, applied to matrices only")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="clip the global grad norm to this (0: off)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="autocast dtype; auto: bf16 where the device runs it faster than fp32"
    )
    compile: bool = Field(False, description="torch.compile the model (never forced)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: DDP or FSDP2 (fully_shard)")
    eval_every: int = Field(200, ge=0, description="steps between evals (0: only at the end)")
    eval_batches: int = Field(20, ge=1, description="micro-batches per periodic eval")
    save_every: int = Field(500, ge=0, description="steps between checkpoints (0: only at the end/interrupt)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    log_every: int = Field(10, ge=1, description="steps between progress/metrics lines")
    resume: str | None = Field(None, description="auto (newest complete checkpoint), or a checkpoint dir")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    lr_schedule: Literal["cosine", "linear"] = Field("cosine", description="decay from lr to min_lr after warmup")
    schedule_end: Literal["auto", "first"] = Field(
        "auto", description="where the LR schedule ends — auto: at max_steps when set, else at max_time; first: "
        "at whichever of max_steps and max_time comes first (a run cut by the clock still decays to min_lr)"
    )
    ema: float = Field(0.0, ge=0, lt=1, description="decay of an exponential moving average of the weights, "
                       "updated every step; evals and the final model use it, checkpoints keep both (0: off)")

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return parse_duration(v)


class PretrainConfig(TrainConfig):
    """`llmchain pretrain`: a Llama-family model from scratch on token shards."""

    data: str = Field(..., description="token shards dir (train-*.bin, val-*.bin, shards.json)")
    out: str = Field(..., description="run dir (runs/NAME): config.yaml, metrics.jsonl, tb/, checkpoints/, final/")
    preset: str = Field("micro", description="model size (llmchain presets)")
    model: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset's config fields")
    seq_len: int | None = Field(None, ge=2, description="tokens per sequence (default: min(512, context))")
    tokenizer: str | None = Field(None, description="tokenizer dir copied into checkpoints/final (default: from shards)")
    init_from: str | None = Field(None, description="start from this model dir instead of random weights")
    dropout: float | None = Field(None, ge=0, lt=1, description="training dropout on embeddings and "
                                   "residual branches (default: the model's; 0 for presets)")


# --- finetune --------------------------------------------------------------------------------


class ClassifyConfig(TrainConfig):
    """`llmchain finetune classify`: a text classifier from an HF encoder dir (or `minilm`) or our decoder.

    Trains through the shared loop; one epoch = one pass over the training rows in length buckets.
    """

    model: str = Field(..., description="HF encoder dir, our decoder model dir, or 'minilm' (bundled MiniLM-L6)")
    train: str = Field(..., description="CSV, TSV or JSONL with a text and a label column")
    val: str | None = Field(None, description="validation file (default: val_fraction of train, stratified)")
    test: str | None = Field(None, description="optional test file, scored once with the best model")
    out: str = Field(..., description="run dir: metrics.jsonl, confusion-epoch-N.png, best/ (classifier dir)")
    text_column: str | None = Field(None, description="default: text, sentence, review, content, ...")
    label_column: str | None = Field(None, description="default: label, labels, class, category, target")
    header: bool | None = Field(None, description="CSV/TSV header row: null sniffs it (a first row with a number "
                                "or a sentence in a cell is data), false: none, columns by index 0, 1, ...")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="held out of train when no val file is given")
    epochs: int = Field(3, ge=1, description="passes over the training data (max_steps overrides)")
    max_length: int = Field(128, ge=2, description="tokens per text; longer texts are truncated")
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency")
    threshold: Literal["argmax", "val"] = Field(
        "argmax", description="two labels only — argmax: the more probable label; val: predict the second label "
        "when its probability reaches the threshold that maximises macro-F1 on the validation set (saved in "
        "best/config.json as classifier_threshold; the test set is never used to choose it)"
    )
    pooling: Literal["last", "mean"] = Field(
        "last", description="our decoder's head reads the last real token's hidden state (last) or the mean over "
        "the real tokens (mean); an HF encoder keeps its own pooling (mean is an error there)"
    )
    patience: int = Field(2, ge=0, description="stop after this many evals without a better val macro-F1 (0: off)")
    strict: bool = Field(False, description="a malformed row is an error instead of being rejected")
    embedding_rows: Literal["used", "all"] = Field(
        "used", description="used: AdamW sees only the word-embedding rows of tokens in the training data (same math, faster); all: the whole table"
    )
    eval_batch_size: int = Field(128, ge=1)
    # Defaults that suit fine-tuning a pretrained encoder (BERT-style) rather than pretraining.
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    min_lr: float | None = Field(0.0, ge=0, description="LR at the end of the schedule")
    batch_size: int = Field(32, ge=1, description="texts per micro-batch per process")
    warmup_steps: int | None = Field(None, ge=0, description="default: 6% of the steps")
    weight_decay: float = Field(0.01, ge=0)
    beta2: float = Field(0.999, ge=0, lt=1)
    eval_every: int = Field(0, ge=0, description="steps between evals (0: once per epoch)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: once per epoch)")
    log_every: int = Field(20, ge=1)
    seed: int = Field(0)


class SFTConfig(TrainConfig):
    """`llmchain finetune sft`: chat/instruction fine-tuning of our decoder, full or LoRA (PEFT)."""

    model: str = Field(..., description="base model dir (HF format, with tokenizer + chat_template)")
    data: str = Field(..., description="JSONL/JSON: OpenAI messages, Alpaca or prompt/completion records")
    out: str = Field(..., description="run dir: metrics.jsonl, samples/, checkpoints/, adapter/, final/")
    format: Literal["auto", "messages", "alpaca", "prompt_completion"] = Field(
        "auto", description="record format (auto: detected from the first record's fields)"
    )
    val_data: str | None = Field(None, description="validation file (default: val_fraction of data)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="examples held out when no val_data is given")
    seq_len: int = Field(512, ge=8, description="max tokens per example (and per packed row)")
    too_long: Literal["truncate", "drop"] = Field("truncate", description="what to do with longer examples")
    pack: bool = Field(False, description="pack several examples per row (attention stays within each)")
    system_prompt: str | None = Field(None, description="system message added to records that have none")
    epochs: float = Field(3.0, gt=0, description="passes over the data (max_steps overrides; max_time caps "
                          "them when epochs is given, else the time budget sets the length)")
    lora: bool = Field(False, description="train LoRA adapters (PEFT) instead of all weights")
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get adapters",
    )
    merge: bool = Field(True, description="LoRA: also write the merged model to final/")
    samples: int = Field(3, ge=0, description="validation prompts to generate for after each eval")
    sample_tokens: int = Field(64, ge=1, description="max new tokens per sample generation")
    keep_best: bool = Field(False, description="final/ = the weights of the eval with the lowest val loss "
                            "(not the last step's)")
    patience: int = Field(0, ge=0, description="stop after this many evals in a row without a lower val loss "
                          "(0: off)")
    strict: bool = Field(False, description="a malformed record is an error instead of being rejected")
    # Defaults for fine-tuning (smaller LR, short warmup, eval every epoch-ish).
    lr: float = Field(2e-5, gt=0, description="peak LR (LoRA runs usually want ~1e-4..1e-3)")
    min_lr: float | None = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    warmup_steps: int | None = Field(None, ge=0, description="default: 3% of the steps")
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int = Field(0, ge=0, description="steps between evals (0: once per epoch)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: once per epoch)")
    seed: int = Field(0)

class PairsConfig(StageConfig):
    """Recipe stage `pairs`: a task's (source, reference) files → SFT, eval or corpus JSONL (data/pairs.py)."""

    format: Literal["sft", "eval", "text"] = Field(..., description="sft: Alpaca {instruction, input, output} "
                                                   "(one row per reference); eval: {prompt, references}; "
                                                   "text: {text} documents, sources and references")
    instruction: str = Field("", description="sft: the instruction before each source (eval: set the same one "
                             "in the eval stage's `instruction`)")
    prompt_field: str | None = Field(None, description="source column/field (default: prompt, source, abstract...)")
    reference_field: str | None = Field(None, description="reference column/field (default: reference(s), title...)")
    max_source_chars: int | None = Field(None, ge=1, description="cut sources to their first N characters (keeps "
                                         "an SFT example's answer inside seq_len)")
    test_every: int = Field(0, ge=0, description="hold out every N-th row (0: none) — see `split`")
    split: Literal["all", "train", "test"] = Field("all", description="with test_every: the rows kept")
    limit: int | None = Field(None, ge=1, description="keep only the first N rows (after the split)")


# --- eval ------------------------------------------------------------------------------------


class EvalLMConfig(StageConfig):
    """`llmchain eval lm`: model loss/perplexity/bits-per-byte beside byte-level n-gram baselines."""

    orders: list[int] = Field([3, 5], description="n-gram baseline orders (Kneser-Ney on bytes); [] for none")
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    seq_len: int | None = Field(None, ge=2, description="tokens per window (default: the model's context, ≤ 1024)")
    max_tokens: int | None = Field(None, ge=1, description="evaluate only the first N tokens")
    stride: int | None = Field(
        None, ge=1, description="sliding windows: each scores its last STRIDE tokens after seq_len - STRIDE of context"
    )
    device: str = Field("auto", description="auto, cpu, cuda, mps")


class EvalClassifyConfig(StageConfig):
    """`llmchain eval classify`: a classifier beside Naive Bayes and TF-IDF + logistic regression."""

    text_column: str | None = Field(None, description="text column/field (default: text, sentence, review, ...)")
    label_column: str | None = Field(None, description="label column/field (default: label, class, ...)")
    header: bool | None = Field(None, description="CSV/TSV header row: null sniffs it (a first row with a number "
                                "or a sentence in a cell is data), false: none, columns by index 0, 1, ...")
    group_column: str | None = Field(None, description="test column whose groups get their own macro-F1 "
                                     "(e.g. COLD's topic)")
    zh: Literal["auto", "char", "jieba"] = Field("auto", description="how baselines split Chinese text")
    batch_size: int = Field(32, ge=1, description="texts per model batch")
    seed: int = 0


class SplitConfig(StageConfig):
    """Recipe stage `split`: a labelled table → train/val/test JSONL, stratified by label, deterministic."""

    part: Literal["train", "val", "test"] = Field("train", description="which part is this stage's output "
                                                  "(all three are written)")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="of each class, held out for test (unless a "
                                 "test input is given)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="of each class, held out for validation")
    seed: int = 0
    text_column: str | int | list[str | int] | None = Field(None, description="text column(s); several are "
                                                            "joined with '. ' (default: text, sentence, ...)")
    label_column: str | int | None = Field(None, description="label column (default: label, class, ...)")
    group_column: str | int | None = Field(None, description="kept as 'group' (e.g. a topic column)")
    header: bool | None = Field(None, description="CSV/TSV header row: null sniffs it, false: columns by index")


class EvalGenerateConfig(StageConfig):
    """`llmchain eval generate`: generated text vs references (BLEU, chrF, ROUGE, exact match)."""

    prompt_field: str | None = Field(None, description="prompt column/field (default: prompt, source, ...)")
    reference_field: str | None = Field(None, description="reference column/field (default: reference(s), ...)")
    max_new_tokens: int = Field(64, ge=1, description="tokens generated per prompt")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    chat_template: bool | None = Field(None, description="wrap prompts in the chat template (default: if any)")
    stop: list[str] = Field(default_factory=list, description="cut outputs at these strings")
    limit: int | None = Field(None, ge=1, description="score only the first N examples")
    samples: int = Field(5, ge=0, description="examples shown in the report")
    instruction: str | None = Field(None, description="put before each prompt for the model, with a blank line "
                                    "(as an SFT'd Alpaca instruction); the baselines see the prompt alone")
    seed: int = 0
    device: str = Field("cpu", description="cpu, cuda, auto (cuda when there is one)")


class IndexConfig(StageConfig):
    """`llmchain index`: documents → passages → vectors + a keyword index, in one SQLite file."""

    encoder: str = Field("minilm", description="'minilm' (bundled all-MiniLM-L6-v2) or a local HF encoder dir")
    passage_tokens: int = Field(160, ge=16, le=512, description="most estimated encoder tokens in a passage "
                                "(a CJK character is one, a Latin word about 1.3)")
    batch_size: int = Field(32, ge=1, description="passages per encoder batch")
    device: str = Field("cpu", description="cpu, cuda, mps")
    reader: DataReaderConfig = DataReaderConfig()


class EvalRetrievalConfig(StageConfig):
    """`llmchain eval retrieval`: hybrid, dense and keyword search beside a rank-bm25 baseline."""

    k: list[int] = Field([1, 5, 10], description="cut-offs for recall@k and nDCG@k")
    limit: int | None = Field(None, ge=1, description="use only the first N queries")
    encoder: str = Field("minilm", description="encoder for the index the eval builds")
    passage_tokens: int = Field(160, ge=16, le=512)


class ReportConfig(StageConfig):
    """`llmchain report`: the model card of a run or model dir."""

    samples: int = Field(3, ge=0, description="sample generations in the card (0: none)")
    sample_tokens: int = Field(80, ge=1, description="tokens per sample generation")
    prompts: list[str] = Field(default_factory=list, description="sample prompts (default: starts of val text)")
    temperature: float = Field(0.8, ge=0, description="sampling temperature of the samples (0 = greedy)")
    seed: int = 0
    explain: int = Field(3, ge=0, description="classifiers: explained examples in the card (0: none)")
    explain_texts: list[str] = Field(default_factory=list, description="texts to explain (default: the first "
                                     "texts of the classifier's eval test set)")
    intended_use: str | None = Field(None, description="your statement of intended use (default: a generic one)")
    limitations: str | None = Field(None, description="your statement of limitations (added to the measured ones)")


# --- serve -----------------------------------------------------------------------------------


class ServeConfig(StageConfig):
    """`llmchain serve`: the OpenAI-compatible server (flags override a YAML file's fields)."""

    host: str = "127.0.0.1"  # loopback by default: exposing a server is an explicit choice
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None  # when set, /v1/*, /docs, /openapi.json (and /metrics) need 'Bearer KEY'
    public_metrics: bool = False  # True: /metrics answers without the API key (for a scraper without it)
    served_model_name: str | None = None
    max_batch_size: int = Field(16, ge=1, le=1024)  # KV-cache slots = sequences decoded together
    max_queue: int = Field(256, ge=0)  # waiting requests beyond this get 503 + Retry-After
    max_model_len: int | None = Field(None, ge=2)  # default: the model's max_position_embeddings
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's chat template
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger bodies get 413 before they are read
    device: str = "cpu"
    threads: int = Field(1, ge=1)  # torch CPU threads; 1 keeps decoding batch-invariant (infer/engine.py)
    # Matmul precision: auto = bf16 on CPUs with AMX (row-invariant oneDNN kernels, infer/forward.py), else
    # the weights' own dtype; bfloat16 fails clearly where that path is unavailable.
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    # Question answering over an index (`llmchain index`, docs/qa.md): chat requests get the index_k best
    # passages of their last user message in the prompt and verified [n] citations in the answer.
    index: str | None = None
    index_k: int = Field(4, ge=1, le=32)
    # /v1/embeddings: "minilm" or an encoder dir; default the index's encoder when `index` is set
    embedding_model: str | None = None
    max_embedding_inputs: int = Field(256, ge=1, le=4096)  # texts per /v1/embeddings request
    passage_context_chars: int = Field(1000, ge=0, le=20_000)  # GET /v1/passages/{id}: source text each side
    # The fused C decode step's weights (infer/decoder.py): auto = bf16 where it runs (CPUs without AMX),
    # float32, bfloat16, or int8 (per-channel, opt-in: its perplexity cost is in docs/decode.md).
    weights: Literal["auto", "float32", "bfloat16", "int8"] = "auto"


# --- recipe ----------------------------------------------------------------------------------


class RecipeStageConfig(StageConfig):
    """One stage of a recipe: what it is, which earlier outputs (or files) it takes, its config."""

    type: str | None = None  # the kind of stage (data, tokenizer, pack, ...); default: the stage's name
    inputs: dict[str, str] = {}  # role → the name of an earlier stage, or a path (relative to the recipe)
    config: dict[str, Any] = {}  # that stage's config (the same fields as its CLI's --config YAML)
    description: str | None = None
    # fraction of the recipe's `budget` this (training) stage may run: its config gets max_time = share × budget
    # unless the config sets max_time itself
    share: float | None = Field(None, gt=0, le=1)


class RecipeConfig(StageConfig):
    """A recipe file (`llmchain run RECIPE`): named stages, run in dependency order into runs/NAME/STAGE/."""

    name: str  # the run dir is runs/NAME
    description: str = ""
    # wall-time budget of the whole recipe (seconds or 90s/5m/1h), split among stages by their `share`;
    # `llmchain run NAME --set budget=30m` overrides it
    budget: float | None = Field(None, gt=0)
    stages: dict[str, RecipeStageConfig]

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> float | None:
        return parse_duration(v)
