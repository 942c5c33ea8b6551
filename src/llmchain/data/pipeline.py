"""`Pipeline([...steps...]).run(inputs, out)`: the data stage end to end.

Three phases, each resumable:

1. shards (parallel): read a shard, run the per-document steps, write the survivors and their dedup
   signatures to `OUT/.work/`, the rejected records to `OUT/rejected/part-N.jsonl.gz`, and a
   completion marker last. A rerun (e.g. after SIGKILL) skips shards that have a marker.
2. dedup (once, vectorised): exact and near-duplicate selection over all signatures in corpus order
   (shard, then position), so the first occurrence is kept whatever the number of workers.
3. output (parallel): `OUT/documents/part-N.jsonl.gz` per shard, duplicates to `OUT/rejected/`,
   then `stats.json` and `manifest.json`.

Everything a task needs travels as JSON (shard, step specs, reader options, paths).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from llmchain.artifacts import atomic_path, atomic_write_json, write_manifest
from llmchain.data.executor import make_executor
from llmchain.data.readers import ReaderOptions, Rejection, read_shard
from llmchain.data.sources import Shard, discover, plan_shards, total_bytes
from llmchain.data.steps import Document, GlobalStep, Step, StepStats, check_order, step_from_spec
from llmchain.errors import DataError, UserError

WORK = ".work"


@contextlib.contextmanager
def _work_file(path: Path):
    """Temp file renamed onto `path` on success. No fsync: work files only need to survive a killed
    process (the page cache does), not a power cut — a rerun then simply redoes the shard."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _gz_writer(path: Path, level: int = 6):
    """A deterministic gzip text writer (no file name or time in the header)."""
    raw = open(path, "wb")
    return raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0)


class _JsonlGz:
    """Append JSON lines to `path` atomically (nothing appears under the name until close)."""

    def __init__(self, path: Path) -> None:
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._raw, self._gz = _gz_writer(tmp)
        self._buf: list[str] = []
        self.count = 0

    def write(self, obj: dict[str, Any]) -> None:
        self._buf.append(json.dumps(obj, ensure_ascii=False))
        self.count += 1
        if len(self._buf) >= 2000:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._gz.write(("\n".join(self._buf) + "\n").encode("utf-8"))
            self._buf = []

    def close(self) -> None:
        self._flush()
        self._gz.close()
        self._raw.close()
        self._ctx.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# Phase 1: one shard (runs in a worker; payload and result are plain JSON values)
# ---------------------------------------------------------------------------------------------


def run_shard_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Read one shard, run the per-document steps, write survivors + signatures + rejections.

    Returns {"index", "stats"} or, under strict mode, {"index", "error"} for the first bad record.
    """
    shard = Shard(**payload["shard"])
    work, out = Path(payload["work"]), Path(payload["out"])
    marker = work / f"shard-{shard.index:05d}.done"
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))
    steps = [_cached_step(s, payload.get("in_process", False)) for s in payload["steps"]]
    local = [s for s in steps if not s.is_global]
    global_steps = [s for s in steps if s.is_global]
    opts = ReaderOptions(**payload["reader"])
    read = StepStats("read")
    rejected = _JsonlGz(out / "rejected" / f"part-{shard.index:05d}.jsonl.gz")
    error: list[str] = []

    def reject(doc: Document, step: str, reason: str) -> None:
        rejected.write({**doc.to_json(), "step": step, "reason": reason})

    def records() -> Iterable[Document]:
        for item in read_shard(shard, opts):
            read.docs_in += 1
            if isinstance(item, Rejection):
                read.removed[item.reason.split(":")[0].split(" ")[0]] += 1
                rejected.write(item.to_json() | {"reason": item.reason})
                if payload.get("strict"):
                    error.append(f"{item.source}:{item.line}: {item.reason}")
                    return
                continue
            read.docs_out += 1
            yield item

    docs: Iterable[Document] = records()
    for step in local:
        step.on_reject = reject
        docs = step.run(docs)
    planted: list[dict] = []
    if payload.get("canaries") is not None:  # after the filters (they cannot drop a copy), before dedup
        from llmchain.data.canaries import plant

        docs, planted, canary_stats = plant(list(docs), payload["canaries"], payload["canary_seed"], shard.index)
    sigs: dict[str, list] = {s.name: [] for s in global_steps}
    ids: list[str] = []
    with _work_file(work / f"shard-{shard.index:05d}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
            ids.append(doc.id)
            for s in global_steps:
                sigs[s.name].append(s.signature(doc))
    rejected.close()
    if error:
        return {"index": shard.index, "error": error[0]}
    with _work_file(work / f"shard-{shard.index:05d}.npz") as tmp:
        arrays = {name: _sig_array(v, s) for (name, v), s in zip(sigs.items(), global_steps, strict=False)}
        arrays["__ids__"] = np.array(ids, dtype=str)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    result = {
        "index": shard.index,
        "bytes": _shard_bytes(shard),
        "stats": [read.to_json()] + [s.stats.to_json() for s in local]
        + ([canary_stats] if payload.get("canaries") is not None else []),
    }
    if planted:
        result["canaries"] = planted
    with _work_file(marker) as tmp:
        tmp.write_text(json.dumps(result), encoding="utf-8")
    return result


_STEPS: dict[str, Step] = {}


def _cached_step(spec: dict[str, Any], allow_main: bool) -> Step:
    """The step for `spec`, built once per worker process (a language model loads once, not per
    shard); its stats start from zero for every shard."""
    key = json.dumps(spec, sort_keys=True)
    step = _STEPS.get(key)
    if step is None:
        step = _STEPS[key] = step_from_spec(spec, allow_main=allow_main)
    step.stats = StepStats(step.name)
    return step


def _sig_array(values: list, step: GlobalStep) -> np.ndarray:
    if values and isinstance(values[0], np.ndarray):
        return np.stack(values)
    if not values and hasattr(step, "num_perm"):
        return np.zeros((0, step.num_perm), dtype=np.uint32)
    return np.array(values, dtype=np.uint64)


def _shard_bytes(shard: Shard) -> int:
    return (shard.end - shard.start) if shard.end >= 0 else _size(shard.path)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# Phase 3: write one shard's final documents (runs in a worker)
# ---------------------------------------------------------------------------------------------


def write_output_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Copy the shard's surviving documents to documents/part-N.jsonl.gz, minus the duplicates."""
    index, work, out = payload["index"], Path(payload["work"]), Path(payload["out"])
    removed = {int(k): v for k, v in payload["removed"].items()}
    part = out / "documents" / f"part-{index:05d}.jsonl.gz"
    docs = _JsonlGz(part)
    dups = _JsonlGz(out / "rejected" / f"dedup-{index:05d}.jsonl.gz") if removed else None
    with open(work / f"shard-{index:05d}.jsonl", encoding="utf-8") as f:
        for pos, line in enumerate(f):
            if pos in removed:
                step, reason, dup_id = removed[pos]
                dups.write({**json.loads(line), "step": step, "reason": reason, "duplicate_of": dup_id})
            else:
                docs._buf.append(line.rstrip("\n"))
                docs.count += 1
                if len(docs._buf) >= 2000:
                    docs._flush()
    docs.close()
    if dups is not None:
        dups.close()
    return {"index": index, "kept": docs.count}


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


class Pipeline:
    """An ordered list of steps plus reader options; `run(inputs, out)` writes a documents DIR.

    Per-document steps run shard by shard on the workers; dedup steps (which must come last) run
    over the whole corpus. Steps are rebuilt in the workers from `Step.spec()`.
    """

    def __init__(self, steps: list[Step], reader: ReaderOptions | None = None) -> None:
        check_order(steps)
        self.steps = steps
        self.reader = reader or ReaderOptions()

    @classmethod
    def from_config(cls, config: Any) -> Pipeline:
        from llmchain.data.steps import build_steps

        return cls(build_steps(config), ReaderOptions(**config.reader.model_dump()))

    def run(
        self,
        inputs: list[str | os.PathLike] | str | os.PathLike,
        out: str | os.PathLike,
        *,
        workers: int = 1,
        executor: str = "local",
        ray_address: str | None = None,
        strict: bool = False,
        shard_mb: float = 16.0,
        config: Any = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Process `inputs` into `out`; returns the stats (also written to OUT/stats.json).

        `progress(phase, done, total)` is called as work finishes. Raises DataError under `strict`
        at the first unreadable record, UserError for a missing input.
        """
        t0 = time.time()
        _STEPS.clear()  # in-process runs must see steps redefined since the last run (notebooks)
        inputs = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
        out = Path(out)
        files, unknown = discover(inputs)
        if unknown and strict:
            raise DataError(f"{unknown[0]}: unknown file type (known: .txt .md .jsonl .csv .tsv .parquet .html .warc, .gz/.zst)")
        shards = plan_shards(files, max(1, int(shard_mb * (1 << 20))), self.reader.text_unit)
        specs = [s.spec() for s in self.steps]
        work = out / WORK
        canary_cfg = getattr(config, "canaries", None)
        canary_cfg = canary_cfg if canary_cfg is not None and canary_cfg.count > 0 else None
        canary_key = [{"canaries": canary_cfg.model_dump(mode="json")}] if canary_cfg else []
        self._prepare_work_dir(out, work, shards, specs + canary_key)
        in_process = executor == "local" and workers == 1
        base = {"steps": specs, "reader": asdict(self.reader), "work": str(work), "out": str(out),
                "strict": strict, "in_process": in_process}
        payloads = [base | {"shard": s.to_json()} for s in shards]
        if canary_cfg:
            from llmchain.data.canaries import assign_copies, make_canaries

            canaries = make_canaries(canary_cfg)
            plan = assign_copies(canaries, {s.index: _shard_bytes(s) for s in shards}, canary_cfg.seed)
            for p in payloads:
                p.update(canaries=plan[p["shard"]["index"]], canary_seed=canary_cfg.seed)
        total = total_bytes(shards)
        results: dict[int, dict[str, Any]] = {}
        done_bytes = 0
        with make_executor(executor, workers, ray_address) as ex:
            for res in ex.map(run_shard_task, payloads):
                if "error" in res:
                    raise DataError(res["error"])
                results[res["index"]] = res
                done_bytes += res.get("bytes", 0)
                if progress:
                    progress("read+filter", done_bytes, total)
            self._check_unique_ids(shards, work)
            t1 = time.time()
            removed, dedup_stats = self._dedup(shards, work, progress)
            t2 = time.time()
            out_payloads = [{"index": s.index, "work": str(work), "out": str(out),
                             "removed": removed.get(s.index, {})} for s in shards]
            kept = 0
            for i, res in enumerate(ex.map(write_output_task, out_payloads), 1):
                kept += res["kept"]
                if progress:
                    progress("write", i, len(shards))
        stats = self._stats(shards, results, dedup_stats, unknown, kept, inputs, total)
        stats["seconds"] = {"read+filter": round(t1 - t0, 3), "dedup": round(t2 - t1, 3),
                            "write": round(time.time() - t2, 3), "total": round(time.time() - t0, 3)}
        if unknown:
            rej = _JsonlGz(out / "rejected" / "unknown-files.jsonl.gz")
            for f in unknown:
                rej.write({"source": str(f), "line": 0, "step": "read", "reason": "unknown_file_type"})
            rej.close()
        # Timings go to the manifest, not stats.json: stats.json is content (the same input and steps give
        # the same file), so a recipe re-running this stage sees unchanged output and skips what follows.
        atomic_write_json(out / "stats.json", {k: v for k, v in stats.items() if k != "seconds"})
        extra: dict[str, Any] = {"seconds": stats["seconds"]}
        if canary_cfg:
            from llmchain.data.canaries import write_record

            placements = [p for i in sorted(results) for p in results[i].get("canaries", [])]
            removed_int = {int(k): v for k, v in removed.items()}
            extra["canaries"] = write_record(out, canary_cfg, canaries, placements, removed_int)
        write_manifest(out, "documents", inputs=[str(f) for f in files], config=config or {"steps": specs},
                       counts={"documents": kept, "rejected": stats["rejected"], "shards": len(shards)},
                       extra=extra)
        shutil.rmtree(work, ignore_errors=True)
        return stats

    def _prepare_work_dir(self, out: Path, work: Path, shards: list[Shard], specs: list[dict]) -> None:
        """Keep the work dir (resume) only if it was made by the same inputs, plan and steps."""
        if out.exists() and any(out.iterdir()) and not (work.exists() or (out / "manifest.json").exists()):
            raise UserError(f"{out} exists and is not an output of `data prepare`; choose a new or empty --out")
        key = {"steps": specs, "reader": asdict(self.reader), "shards": [s.to_json() for s in shards],
               "sizes": [_size(s.path) for s in shards]}
        fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        stamp = work / "fingerprint"
        if not (stamp.exists() and stamp.read_text().strip() == fingerprint):
            for sub in (work, out / "documents", out / "rejected"):
                shutil.rmtree(sub, ignore_errors=True)
            work.mkdir(parents=True)
            atomic_write_json(work / "plan.json", key)
            stamp.write_text(fingerprint + "\n")
        (out / "documents").mkdir(parents=True, exist_ok=True)
        (out / "rejected").mkdir(parents=True, exist_ok=True)

    def _check_unique_ids(self, shards: list[Shard], work: Path) -> None:
        """DataError naming both records when two documents share an id (ids from reader.id_field can)."""
        per_shard = []
        for s in shards:
            with np.load(work / f"shard-{s.index:05d}.npz") as z:
                per_shard.append(z["__ids__"])
        ids = np.concatenate(per_shard) if per_shard else np.zeros(0, dtype=str)
        uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
        if not (counts > 1).any():
            return
        # the earliest repeat in input order, and where its two records are
        dup_pos = np.setdiff1d(np.arange(ids.size), first)
        dup = str(ids[dup_pos.min()])
        places = []
        for s in shards:
            with open(work / f"shard-{s.index:05d}.jsonl", encoding="utf-8") as f:
                for line in f:
                    doc = json.loads(line)
                    if doc["id"] == dup:
                        places.append(f"{doc['source']}:{(doc.get('meta') or {}).get('line', '?')}")
            if len(places) >= 2:
                break
        field = self.reader.id_field
        raise DataError(f"{places[1]}: document id {dup!r} is also the id of {places[0]}; ids (reader."
                        f"id_field {field!r}) must be unique: fix the data, or set reader.id_field: null to "
                        "number documents FILE:LINE")  # fmt: skip

    def _dedup(self, shards: list[Shard], work: Path, progress: Callable | None) -> tuple[dict, list[dict]]:
        """Run the global steps over all signatures; returns {shard: {pos: (step, reason, dup_id)}}."""
        global_steps = [step_from_spec(s.spec(), allow_main=True) for s in self.steps if s.is_global]
        if not global_steps:
            return {}, []
        arrays = [np.load(work / f"shard-{s.index:05d}.npz") for s in shards]
        counts = [len(a["__ids__"]) for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(offsets[-1])
        alive = np.ones(n, dtype=bool)
        loader = _TextLoader(work, shards, offsets)
        all_ids = np.concatenate([a["__ids__"] for a in arrays]) if n else np.zeros(0, dtype=str)
        removed: dict[int, dict[int, tuple]] = {}
        stats = []
        for step in global_steps:
            sig = np.concatenate([a[step.name] for a in arrays]) if n else np.zeros((0,), np.uint64)
            n_in = int(alive.sum())
            dup_of = step.select(sig, alive, loader) if n else np.zeros(0, np.int64)
            reason = "exact_duplicate" if step.name == "exact_dedup" else "near_duplicate"
            hit = np.flatnonzero(dup_of >= 0)
            shard_of = np.searchsorted(offsets, hit, side="right") - 1
            dup_ids = all_ids[dup_of[hit]].tolist()
            for g, s_idx, d in zip(hit.tolist(), shard_of.tolist(), dup_ids, strict=False):
                removed.setdefault(s_idx, {})[g - int(offsets[s_idx])] = (step.name, reason, d)
            alive[hit] = False
            stats.append({"name": step.name, "in": n_in, "out": int(alive.sum()),
                          "removed": {reason: len(hit)} if len(hit) else {}, "counters": {}})
        return {k: {str(p): v for p, v in d.items()} for k, d in removed.items()}, stats

    def _stats(self, shards, results, dedup_stats, unknown, kept, inputs, total) -> dict[str, Any]:
        merged: dict[str, StepStats] = {}
        order: list[str] = []
        for idx in sorted(results):
            for st in results[idx]["stats"]:
                if st["name"] not in merged:
                    merged[st["name"]] = StepStats(st["name"])
                    order.append(st["name"])
                merged[st["name"]].merge(st)
        steps = [merged[name].to_json() for name in order] + dedup_stats
        read = steps[0] if steps else {"in": 0, "out": 0, "removed": {}}
        removed_total = sum(sum(s["removed"].values()) for s in steps[1:])
        # a step may add documents (the canaries): it counts them in counters["added"]
        added = sum(s.get("counters", {}).get("added", 0) for s in steps[1:])
        for s in steps[1:]:
            if s["in"] + s.get("counters", {}).get("added", 0) != s["out"] + sum(s["removed"].values()):
                raise RuntimeError(f"internal error: step {s['name']} lost documents ({s})")
        if read["out"] + added != kept + removed_total:
            raise RuntimeError(f"internal error: {read['out']} documents read but {kept} kept + {removed_total} removed")
        return {
            "inputs": inputs,
            "files": len({s.path for s in shards}),
            "unknown_files": [str(f) for f in unknown],
            "shards": len(shards),
            "input_bytes": total,
            "records": read["in"],
            "unreadable": sum(read["removed"].values()),
            "documents_read": read["out"],
            "kept": kept,
            "removed": removed_total,
            "rejected": sum(read["removed"].values()) + removed_total + len(unknown),
            "steps": steps,
            "removed_by_reason": dict(Counter({f"{s['name']}:{r}": c for s in steps for r, c in s["removed"].items()})),
        }


class _TextLoader:
    """Texts and ids of documents by corpus index, read from the work files (for dedup checks)."""

    def __init__(self, work: Path, shards: list[Shard], offsets: np.ndarray) -> None:
        self.work, self.shards, self.offsets = work, shards, offsets
        self._cache: dict[int, list[dict]] = {}

    def _shard_docs(self, s: int) -> list[dict]:
        if s not in self._cache:
            with open(self.work / f"shard-{self.shards[s].index:05d}.jsonl", encoding="utf-8") as f:
                self._cache[s] = [json.loads(line) for line in f]
        return self._cache[s]

    def _get(self, g: int) -> dict:
        s = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return self._shard_docs(s)[g - int(self.offsets[s])]

    def __call__(self, indices: Iterable[int]) -> dict[int, str]:
        return {g: self._get(g)["text"] for g in indices}
