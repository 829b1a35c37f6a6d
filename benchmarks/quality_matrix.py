"""``quality.py matrix``: every corpus x budget, seqlm's preset against its peer, side by side.

A row is a corpus and a token unit; each row x budget trains the seqlm preset of that budget
(``cpu-fast`` at 95 s, ``cpu-quality`` at 540 s: the preset whose ``time_budget`` is nearest)
and the row's peer at the same time (``run --parallel``, one thread each), and stores the
result as ``<results>/quality-<row>-<budget>.json``. A stored result is reused unless
``--force`` or its setup (the presets' and the peer's settings as they resolve now, the
stream, and the rules of ``seqlm.recipe`` when a preset adapts) differs from the current
one. The table and the figure are rebuilt from the stored results, with the issue's
done-when checks as pass/fail columns:

* stable: seqlm's final evaluation is within ``STABLE`` nats of its best;
* gain: the long budget's best is at least ``GAIN`` below the short budget's;
* ahead: seqlm's best is below the peer's;
* vs bigram (rows that ask for it, short budget): perplexity at most ``BIGRAM_RATIO`` x the
  add-0.1 bigram's.

Corpora other than the named ones are ``<name>.txt`` in a folder of ``SEQLM_DATA`` or in the
shared data folder beside the repository (``../shared/data``); a row whose file is missing is
reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from seqlm.errors import CorpusError
from seqlm.presets import preset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "quality.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
BUDGETS = (95.0, 540.0)
PRESETS = ("cpu-fast", "cpu-quality")
STABLE, GAIN, BIGRAM_RATIO = 0.02, 0.03, 0.8


@dataclass(frozen=True)
class Row:
    """One corpus of the matrix: where its text is, its token unit and the peer it meets."""

    name: str
    source: str  # a named corpus (seqlm.text.CORPORA), or the stem of a data file
    named: bool = False
    tokenizer: str = "char"
    peer: str = "transformer"
    bigram_check: bool = False
    clean: str | None = None  # seqlm's --clean for the stream (None: the stream's own, none)


ROWS = {row.name: row for row in (
    Row("builtin", "builtin", named=True),
    Row("python-source", "python-source", named=True),
    Row("timemachine", "timemachine", named=True),
    # alice.txt keeps Project Gutenberg's licence at its end: as read, the held-out 10 % would
    # be legal prose, not the book
    Row("alice", "alice", clean="gutenberg"),
    Row("warpeace", "warpeace"),
    Row("sanguoyanyi", "sanguoyanyi", bigram_check=True),
    Row("warpeace-word", "warpeace", tokenizer="word", peer="wlm"),
)}


def data_dirs() -> list[Path]:
    """The folders of ``SEQLM_DATA``, then the shared data folder beside the repository."""
    dirs = [Path(p).expanduser() for p in os.environ.get("SEQLM_DATA", "").split(os.pathsep) if p]
    return dirs + [SHARED_DATA]


def corpus_of(row: Row) -> str | None:
    """The ``--corpus`` value of ``row``: its name, or the path of its file (None: missing)."""
    if row.named:
        return row.source
    return next((str(d / f"{row.source}.txt") for d in data_dirs()
                 if (d / f"{row.source}.txt").is_file()), None)


def preset_for(budget: float) -> str:
    """The preset of ``PRESETS`` whose ``time_budget`` is nearest ``budget``."""
    return min(PRESETS, key=lambda name: abs(preset(name).get("time_budget", math.inf) - budget))


def result_path(results: Path, row: str, budget: float) -> Path:
    return Path(results) / f"quality-{row}-{budget:g}.json"


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plan(rows: list[str], budgets: list[float], results: Path, setup, *,
         force: bool = False) -> list[dict]:
    """What ``matrix`` would do for each row x budget, without training.

    Args:
        rows: row names (keys of :data:`ROWS`).
        budgets: seconds per model.
        results: the folder of stored results.
        setup: ``setup(models, tokenizer, clean) -> dict`` (quality.py's), the settings
            that decide whether a stored result still stands.
        force: rerun stored results too.

    Returns:
        One dict per row x budget: ``row``, ``budget``, ``models``, ``corpus``, ``path``,
        ``action`` ('run', 'skip' or 'missing') and ``reason``.
    """
    out = []
    for name in rows:
        row = ROWS[name]
        corpus = corpus_of(row)
        for budget in budgets:
            models = [preset_for(budget), row.peer]
            path = result_path(results, name, budget)
            item = {"row": name, "budget": budget, "models": models, "corpus": corpus,
                    "path": path}
            if corpus is None:
                item.update(action="missing", reason=f"{row.source}.txt is in no SEQLM_DATA "
                            f"folder nor in {SHARED_DATA}; set SEQLM_DATA to a folder holding it")
            else:
                item.update(zip(("action", "reason"), _decide(load(path), setup(
                    models, row.tokenizer, row.clean), force)))
            out.append(item)
    return out


def _decide(stored: dict | None, current: dict, force: bool) -> tuple[str, str]:
    if force:
        return "run", "--force"
    if stored is None:
        return "run", "no stored result"
    old = stored.get("setup", stored.get("recipe")) or {}  # "recipe": results before 0.2
    if old != current:
        changed = [spec for spec, settings in current["models"].items()
                   if old.get("models", {}).get(spec) != settings]
        if old.get("stream") != current["stream"]:
            changed.append("the stream")
        if old.get("rules") != current.get("rules"):
            changed.append("the recipe's rules")
        return "run", f"setup changed ({', '.join(changed) or 'models'})"
    return "skip", "stored with the current setup"


# ---- running ------------------------------------------------------------------------------------

def run_planned(item: dict, run, *, sample_tokens: int, keep: Path | None = None) -> dict:
    """Trains one planned row x budget side by side with ``run`` (quality.py's) and stores it
    (with ``keep``, the seqlm model's final weights too, as ``keep/<row>-<budget>``)."""
    row = ROWS[item["row"]]
    with tempfile.TemporaryDirectory(prefix="seqlm-matrix-") as tmp:
        args = argparse.Namespace(
            corpus=item["corpus"], tokenizer=row.tokenizer, clean=row.clean,
            budget=item["budget"],
            eval_every=item["budget"] / 12, models=item["models"], threads=1, parallel=True,
            prefix=None, sample_tokens=sample_tokens, temperature=0.7, seed=0, out=Path(tmp),
            keep=Path(keep) / f"{item['row']}-{item['budget']:g}" if keep else None)
        result = run(args)
    result["row"] = item["row"]
    path = Path(item["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)  # a row is stored whole or not at all
    return result


def run_matrix(items: list[dict], run, *, sample_tokens: int, log,
               keep: Path | None = None) -> int:
    """Runs every planned item whose action is 'run'; a corpus that cannot be read is logged
    as skipped, a model that fails as failed, and the others go on.

    Returns:
        The number of items that failed.
    """
    failed = 0
    for item in items:
        label = f"{item['row']} {item['budget']:g} s ({' vs '.join(item['models'])})"
        if item["action"] != "run":
            log(f"matrix: {label}: skipped, {item['reason']}")
            continue
        log(f"matrix: {label}: running, {item['reason']}")
        try:
            run_planned(item, run, sample_tokens=sample_tokens, keep=keep)
        except CorpusError as exc:
            log(f"matrix: {label}: skipped, {exc}")
        except SystemExit as exc:  # a model's process failed; its error is printed above
            log(f"matrix: {label}: failed ({exc}); nothing stored")
            failed += 1
    return failed


# ---- the table ------------------------------------------------------------------------------------

def _sides(result: dict) -> tuple[str, dict, str, dict]:
    """``(seqlm spec, its result, peer spec, its result)`` of a stored result."""
    models = result["models"]
    rnn = next(spec for spec, r in models.items() if r["kind"] == "rnn")
    peer = next(spec for spec, r in models.items() if r["kind"] != "rnn")
    return rnn, models[rnn], peer, models[peer]


def _final(r: dict) -> float:
    return r.get("final_loss", r["curve"][-1]["loss"])


def _flag(ok: bool | None) -> str:
    return "–" if ok is None else ("pass" if ok else "FAIL")


def check_lines(stored: dict[tuple[str, float], dict], rows: list[str],
                budgets: list[float]) -> list[dict]:
    """One dict per row x budget with the table's numbers and the checks (True, False, or
    None where a check does not apply or its results are missing)."""
    lines = []
    for name in rows:
        shortest = next((b for b in sorted(budgets) if (name, b) in stored), None)
        for budget in sorted(budgets):
            res = stored.get((name, budget))
            if res is None:
                lines.append({"row": name, "budget": budget, "result": None})
                continue
            rnn, r, peer, q = _sides(res)
            base = stored[(name, shortest)]
            gain = None if budget == shortest else (
                r["best_loss"] <= _sides(base)[1]["best_loss"] - GAIN)
            ratio = math.exp(r["best_loss"] - res["bigram_loss"])
            vs_bigram = (ratio <= BIGRAM_RATIO if ROWS[name].bigram_check
                         and budget == shortest else None)
            lines.append({"row": name, "budget": budget, "result": res, "rnn": rnn, "r": r,
                          "peer": peer, "q": q, "ratio": ratio,
                          "stable": _final(r) - r["best_loss"] <= STABLE,
                          "gain": gain, "ahead": r["best_loss"] < q["best_loss"],
                          "vs_bigram": vs_bigram})
    return lines


CHECKS = {"stable": f"final ≤ best + {STABLE:g}",
          "gain": f"≥ {GAIN:g} below the shortest budget",
          "ahead": "ahead of the peer",
          "vs_bigram": f"ppl ≤ {BIGRAM_RATIO:g} × bigram"}


def render(lines: list[dict]) -> str:
    """The markdown table of :func:`check_lines`, and a line counting the checks."""
    head = ("| row | budget | seqlm | best | final | peer | best | final | margin | steps "
            "| tokens/s | bigram | ppl ÷ bigram ppl | " + " | ".join(CHECKS.values()) + " |")
    out = [head, "|" + "---|" * 3 + "---:|" * 2 + "---|" + "---:|" * 7 + "---|" * len(CHECKS)]
    failed, passed = [], 0
    for ln in lines:
        if ln["result"] is None:
            out.append(f"| {ln['row']} | {ln['budget']:g} s | not run |" + " |" * 14)
            continue
        r, q = ln["r"], ln["q"]
        out.append(
            f"| {ln['row']} | {ln['budget']:g} s | `{ln['rnn']}` | {r['best_loss']:.4f} "
            f"| {_final(r):.4f} | {ln['peer']} | {q['best_loss']:.4f} | {_final(q):.4f} "
            f"| {q['best_loss'] - r['best_loss']:+.4f} | {r['steps']:,} / {q['steps']:,} "
            f"| {r['tokens_per_s']:,.0f} / {q['tokens_per_s']:,.0f} "
            f"| {ln['result']['bigram_loss']:.4f} | {ln['ratio']:.3f} | "
            + " | ".join(_flag(ln[key]) for key in CHECKS) + " |")
        for key in CHECKS:
            if ln[key] is False:
                failed.append(f"{ln['row']} {ln['budget']:g} s {key}")
            passed += ln[key] is True
    summary = f"{passed} checks pass, {len(failed)} fail" + (
        f": {', '.join(failed)}" if failed else "")
    return "\n".join(out) + "\n\n" + summary


def stored_results(rows: list[str], budgets: list[float], results: Path
                   ) -> dict[tuple[str, float], dict]:
    found = {}
    for name in rows:
        for budget in budgets:
            res = load(result_path(results, name, budget))
            if res is not None:
                res.setdefault("row", name)
                found[(name, budget)] = res
    return found


def write_doc(path: Path, text: str) -> None:
    """Puts ``text`` between the matrix markers of ``path``."""
    doc = path.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc or doc.index(BEGIN) > doc.index(END):
        raise SystemExit(f"quality.py: {path} has no {BEGIN} ... {END} markers; add them "
                         "where the matrix table goes")
    before, rest = doc.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(f"{before}{BEGIN}\n{text}\n{END}{after}", encoding="utf-8")
    os.replace(partial, path)


# ---- the command --------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("matrix", help="every corpus x budget, seqlm vs its peer, stored rows")
    p.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS),
                   help="the rows to run (the table always shows every row)")
    p.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS),
                   help="seconds per model; each runs the preset whose time_budget is nearest")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of stored results")
    p.add_argument("--force", action="store_true", help="rerun stored results too")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: print the table of the stored results")
    p.add_argument("--doc", type=Path, nargs="?", const=DOC, default=None,
                   help=f"write the table between the matrix markers of this file "
                   f"(default {DOC.relative_to(ROOT)}) and the figure beside it")
    p.add_argument("--figure", type=Path, default=None,
                   help="the figure's path (default quality-matrix.png beside --doc)")
    p.add_argument("--sample-tokens", type=int, default=300)
    p.add_argument("--keep", type=Path, default=None, help="also save each seqlm model's "
                   "final weights as a run directory <keep>/<row>-<budget> (for "
                   "benchmarks/reading.py)")


def main(args, *, run, setup, plot, log=None) -> int:
    """``quality.py matrix``: plans, runs what is due, and prints (and writes) the table.

    ``run``, ``setup`` and ``plot`` are quality.py's (passed in: that script imports this one).
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    # Named corpora (timemachine) resolve from the same folders as the files.
    os.environ["SEQLM_DATA"] = os.pathsep.join(str(d) for d in data_dirs())
    failed = 0
    if not args.table_only:
        items = plan(args.rows, args.budgets, args.results, setup, force=args.force)
        failed = run_matrix(items, run, sample_tokens=args.sample_tokens, log=log,
                            keep=args.keep)
    stored = stored_results(list(ROWS), args.budgets, args.results)
    text = render(check_lines(stored, list(ROWS), args.budgets))
    print(text)
    figure = args.figure or (args.doc.parent / "quality-matrix.png" if args.doc else None)
    if figure is not None and stored:
        plot(list(stored.values()), figure)
    if args.doc is not None:
        write_doc(args.doc, text)
    return 1 if failed else 0
