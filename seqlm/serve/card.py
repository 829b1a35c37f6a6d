"""A served run's model card: what the model is, read from the files ``seqlm train`` wrote.

The page shows it above every tab, so that two runs never look the same: the corpus and its
size, the tokenizer, the budget and the time actually trained, the best validation perplexity
beside the unigram and bigram baselines of the same split (what counting alone achieves),
the recipe's choices, and how to use the model from Python and the command line.
"""

from __future__ import annotations

import json
import shlex

from seqlm.serve.engine import finite
from seqlm.serve.runs import ServedRun, read_records, run_root

BUDGET_FIELDS = ("time_budget", "max_steps", "epochs")  # the train config's budgets
RECIPE_FIELDS = ("cell", "hidden_size", "num_layers", "embedding_dim", "dropout", "output")


def run_card(run: ServedRun) -> dict:
    """The ``GET /api/runs/{name}/card`` answer (fields absent from a bare checkpoint are
    null)."""
    config, model = run.config, run.model_config
    data, train = config.get("data") or {}, config.get("train") or {}
    records = read_records(run_root(run) / "metrics.jsonl")
    facts = run.facts()
    known = not isinstance(facts, str)
    examples = facts.examples if known else _sample_examples(records)
    return {
        "name": run.name, "backend": run.backend,
        "corpus": {"name": data.get("corpus"), "tokens": facts.sizes if known else None},
        "tokenizer": {"kind": run.tokenizer.kind, "vocab_size": model["vocab_size"]},
        "model": {k: model.get(k) for k in RECIPE_FIELDS},
        "budget": {k: train.get(k) for k in BUDGET_FIELDS},
        "trained": _trained(records),
        "validation": _best(records),
        "baselines": _baselines(facts) if known else {"unavailable": facts},
        "recipe": {"preset": config.get("preset"),
                   "chosen": (config.get("recipe") or {}).get("chosen") or {}},
        "examples": examples,
        "use": _snippets(run, (examples or {}).get("prefix", "")),
    }


def _trained(records: list[dict]) -> dict | None:
    """Steps, tokens and seconds of the last record written (None before the first)."""
    done = [r for r in records if r.get("kind") in ("train", "eval")]
    if not done:
        return None
    last = done[-1]
    return {"steps": last.get("step"), "tokens": last.get("tokens"),
            "seconds": last.get("elapsed")}


def _best(records: list[dict]) -> dict | None:
    """The best validation perplexity and its step."""
    evals = [r for r in records if r.get("kind") == "eval"
             and isinstance(r.get("val_ppl"), (int, float))]
    if not evals:
        return None
    best = min(evals, key=lambda r: r["val_ppl"])
    return {"perplexity": best["val_ppl"], "step": best.get("step")}


def _baselines(facts) -> dict:
    b = facts.baselines
    return {"split": b["split"], "unigram": finite(b["unigram"]["ppl"]),
            "bigram": finite(b["bigram"]["ppl"]), "bigram_k": b["bigram"]["k"]}


def _sample_examples(records: list[dict]) -> dict | None:
    """Without the corpus: the start of the last sample the run wrote, for every tab."""
    samples = [r["sample"] for r in records if isinstance(r.get("sample"), str)]
    if not samples:
        return None
    text = samples[-1]
    return {"prefix": text[:20], "state": text[:160], "time": text[:260], "score": text[:400]}


def _snippets(run: ServedRun, prefix: str) -> dict:
    """How to use the run: two lines of Python and one command."""
    path, text = str(run.path), json.dumps(prefix, ensure_ascii=False)
    module, loader = (("seqlm.runtime", "seqlm.runtime.load") if run.backend == "onnx"
                      else ("seqlm", "seqlm.load"))
    return {"python": f"import {module}\nlm = {loader}({path!r})\n"
                      f"print(lm.generate({text}, max_new_tokens=100, seed=0))",
            "cli": f"seqlm generate {shlex.quote(path)} --prefix {shlex.quote(prefix)} "
                   "--max-new-tokens 100 --seed 0"}
