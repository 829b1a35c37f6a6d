"""``seqlm stats``, ``prepare``, ``evaluate`` and ``generate``."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from seqlm.cli.flags import add_config_flags, given
from seqlm.config import (DEFAULT_TEMPERATURE, DYNAMIC_RULES, DYNAMIC_SEGMENT, READING_ROWS,
                          DataConfig)
from seqlm.decoding import MAX_NEW_TOKENS
from seqlm.errors import ConfigError, check_positive_int

TEXT_FIELDS = ("corpus", "encoding", "clean", "tokenizer", "min_freq", "max_vocab",
               "bpe_vocab_size", "keep_newlines")
NOT_TEXT = tuple(f for f in DataConfig.__dataclass_fields__ if f not in TEXT_FIELDS)


def register(sub) -> None:
    p = sub.add_parser("stats", help="token counts, n-gram tables, Zipf exponent, log-log plot")
    add_config_flags(p, DataConfig, title="corpus", skip=NOT_TEXT)
    p.add_argument("--top", type=int, default=10, help="rows of each frequency table")
    p.add_argument("--plot", metavar="PNG", help="write the n-gram frequency figure here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser("prepare", help="encode a corpus once into memory-mappable arrays")
    p.add_argument("out", help="directory to write (train/val/test .npy + corpus.json)")
    add_config_flags(p, DataConfig, title="corpus",
                     skip=("sampler", "batch_size", "num_steps", "max_tokens"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_prepare)

    _register_evaluate(sub)

    p = sub.add_parser("generate", help="continue a prefix with a trained model")
    p.add_argument("checkpoint", help="a run directory (its checkpoints/best, else last) or a "
                   "checkpoint directory")
    p.add_argument("--last", action="store_true", help="a run's checkpoints/last (the final "
                   "weights) instead of checkpoints/best")
    p.add_argument("--prefix", default="", help="text to continue (fed through first: warm-up)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                   help="tokens to generate")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="below 1 sharpens, above 1 flattens; 0 = greedy (the book's)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="continuations side by side")
    p.add_argument("--stop", default=None, help="end a sample where this text appears")
    p.add_argument("--strict", action="store_true", help="unknown prefix tokens are an error")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (torch "
                   "backend; onnx runs on the CPU)")
    p.add_argument("--backend", default=None, choices=["torch", "onnx"], help="onnx: "
                   "onnxruntime on an export (seqlm export; RUN/onnx for a run), never "
                   "importing torch, with the same text as torch (greedy or the same --seed); "
                   "default: onnx for an export directory or without torch installed, else "
                   "torch")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_generate)


def _register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="loss, perplexity and bits of a checkpoint on a split")
    p.add_argument("checkpoint", help="a run directory (its checkpoints/best, else last) or a "
                   "checkpoint directory")
    p.add_argument("--last", action="store_true", help="a run's checkpoints/last (the final "
                   "weights) instead of checkpoints/best")
    p.add_argument("--corpus", help="evaluate on this corpus instead of the run's")
    p.add_argument("--encoding", default="utf-8", help="encoding of --corpus")
    p.add_argument("--split", default=None, choices=["train", "val", "test", "all"],
                   help="which part (the run's fractions); all = the whole corpus (default: "
                   "val, or test with --cache/--dynamic, whose settings are chosen on val)")
    p.add_argument("--batch-size", type=int, default=None, help="rows evaluated side by side, "
                   "each from the zero state (default: the run's, as its training evaluated; "
                   f"{READING_ROWS} with --cache/--dynamic)")
    p.add_argument("--num-steps", type=int, default=None, help="time steps per forward call "
                   "(default: the run's; the state is carried, so this changes speed, not the "
                   f"static result; with --dynamic the {DYNAMIC_SEGMENT}-token segments read "
                   "between two updates)")
    p.add_argument("--cache", type=int, metavar="SIZE", default=None, help="also read with a "
                   "neural cache of the last SIZE positions (docs/reading.md); its λ and θ are "
                   "chosen on the validation split and stored with the run")
    p.add_argument("--dynamic", nargs="?", const=DYNAMIC_RULES[0], default=None, choices=DYNAMIC_RULES,
                   metavar="RULE", help="also read with dynamic evaluation, updating a copy "
                   f"of the weights after each segment: {' or '.join(DYNAMIC_RULES)} (default "
                   f"{DYNAMIC_RULES[0]}); its learning rate is chosen on the validation split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_evaluate)


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite and (path.is_file() or any(path.iterdir())):
        raise ConfigError(f"{path} already exists; pass --overwrite to replace the {what}, or "
                          "choose another path")


def cmd_stats(args) -> int:
    from seqlm.stats import corpus_stats, plot_frequencies
    from seqlm.text import clean, read_corpus
    from seqlm.tokenize import fit_tokenizer

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    cfg = DataConfig(**given(args, DataConfig))
    if args.plot:
        _refuse_existing(Path(args.plot), args.overwrite, "plot")
    text = clean(read_corpus(cfg.corpus, encoding=cfg.encoding), cfg.clean)
    tok = fit_tokenizer(cfg.tokenizer, text, **cfg.tokenizer_options())
    ids = tok.encode(text)
    stats = corpus_stats(ids, tok.vocab, top=args.top)
    tables = stats.pop("_tables")
    stats.update({"corpus": cfg.corpus, "clean": cfg.clean, "tokenizer": cfg.tokenizer,
                  "characters": len(text)})
    if args.plot:
        plot_frequencies(tables, args.plot, title=f"{cfg.corpus} ({cfg.tokenizer} tokens)")
        stats["plot"] = args.plot
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    print(f"{cfg.corpus}: {stats['characters']:,} characters, {stats['tokens']:,} "
          f"{cfg.tokenizer} tokens, vocabulary {stats['vocab_size']:,} (with <unk>)")
    for name in ("unigrams", "bigrams", "trigrams"):
        block = stats[name]
        print(f"\n{name}: {block['distinct']:,} distinct, Zipf exponent "
              f"{block['zipf_exponent']:.3f}")
        for row in block["top"]:
            shown = " ".join(repr(t)[1:-1] if t.strip() else repr(t) for t in row["tokens"])
            print(f"  {row['count']:>8,}  {shown}")
    if args.plot:
        print(f"\nplot: {args.plot}")
    return 0


def cmd_prepare(args) -> int:
    from seqlm.prepare import prepare_corpus

    cfg = DataConfig(**given(args, DataConfig))
    out = Path(args.out)
    corpus = prepare_corpus(cfg, out, overwrite=args.overwrite)
    report = {"out": str(out), "vocab_size": corpus.vocab_size,
              "tokens": {k: len(v) for k, v in corpus.splits.items()},
              "dtype": str(corpus.tokenizer.dtype), "oov_rate": corpus.oov_rate}
    if args.json:
        print(json.dumps(report))
    else:
        sizes = ", ".join(f"{k} {v:,}" for k, v in report["tokens"].items())
        print(f"prepared {out}: vocabulary {corpus.vocab_size:,}, tokens {sizes} "
              f"({report['dtype']}); train with --corpus {out}")
    return 0


def _load(args, device):
    """The checkpoint the command reads (a run's best unless ``--last``) and the training
    step it holds (None when the checkpoint does not say)."""
    from seqlm.checkpoint import load_checkpoint, resolve_checkpoint

    path = Path(args.checkpoint)
    if args.last:
        if not (path / "checkpoints").is_dir():
            raise ConfigError(f"--last needs a run directory (with checkpoints/), got {path}; "
                              "pass the run, or the checkpoint directory without --last")
        path = path / "checkpoints" / "last"
    ckpt = load_checkpoint(resolve_checkpoint(path), device=device)
    progress = (ckpt.trainer_state or {}).get("progress")
    return ckpt, progress.get("step") if isinstance(progress, dict) else None


def _described(path: str | Path, step: int | None) -> str:
    return f"checkpoint {path}" + (f" (step {step:,})" if step is not None else "")


def cmd_evaluate(args) -> int:
    from seqlm import settings
    from seqlm.data import load_corpus
    from seqlm.devices import resolve_device
    from seqlm.evaluation import evaluate

    reading = args.cache is not None or args.dynamic is not None
    if args.cache is not None:
        check_positive_int("cache", args.cache)
    split = args.split or ("test" if reading else "val")
    for name, value in (("batch_size", args.batch_size), ("num_steps", args.num_steps)):
        if value is not None:
            check_positive_int(name, value)
    device = resolve_device(args.device)
    ckpt, step = _load(args, device)
    own = replace(settings.saved(ckpt.config).data, max_tokens=None)
    data = replace(own, corpus=args.corpus, encoding=args.encoding) if args.corpus else own
    # The run's own rows and window, as its training evaluated (the figure it reported).
    rows = args.batch_size or (READING_ROWS if reading else own.batch_size)
    steps = args.num_steps or (DYNAMIC_SEGMENT if reading else own.num_steps)
    corpus_name = data.corpus
    splits = load_corpus(data, tokenizer=ckpt.tokenizer).splits
    ids = np.concatenate(list(splits.values())) if split == "all" else splits[split]
    if len(ids) < 2:
        raise ConfigError(f"the {split} split of {corpus_name} has {len(ids)} tokens; "
                          "choose another `split` or corpus")
    report = {"checkpoint": str(ckpt.path), "checkpoint_step": step, "corpus": corpus_name,
              "split": split, "oov_rate": float((ids == 0).mean())}
    if reading:
        from seqlm.reading_settings import evaluate_reading

        def run_splits():
            parts = splits if not args.corpus else load_corpus(
                own, tokenizer=ckpt.tokenizer).splits
            return parts["val"], parts["train"]

        found = evaluate_reading(ckpt.model, ckpt.path, ids, cache_size=args.cache,
                                 rule=args.dynamic, rows=rows, segment=steps,
                                 splits=run_splits)
        static = found["evaluations"][0]
        report.update({k: static[k] for k in ("evaluation", "loss", "ppl", "bits", "tokens")},
                      **found)
    else:
        meter = evaluate(ckpt.model, ids, batch_size=rows, num_steps=steps, device=device)
        report.update(evaluation="static", **meter.report())
    unit = "character" if data.tokenizer == "char" else "token"
    if args.json:
        print(json.dumps(report))
    elif reading:
        _print_reading(report, _described(ckpt.path, step), unit, split)
    else:
        print(f"{_described(ckpt.path, step)}: {corpus_name} [{split}]: loss "
              f"{report['loss']:.4f} nats/{unit}, "
              f"perplexity {report['ppl']:.3f}, {report['bits']:.3f} bits/{unit}, "
              f"{report['tokens']:,} tokens, OOV {report['oov_rate']:.2%}")
    return 0


def _print_reading(report: dict, described: str, unit: str, split: str) -> None:
    """One line per evaluation, each labelled, the static one first."""
    print(f"{described}: {report['corpus']} [{split}], {report['tokens']:,} tokens read as "
          f"{report['rows']} row(s) in {report['segment']}-token segments:")
    for row in report["evaluations"]:
        extra = row.get("extra_seconds_per_1k")
        cost = f"{extra:+.2f} s" if extra is not None else f"{row['seconds_per_1k']:.2f} s"
        settings = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                             for part in row.get("settings", {}).values()
                             for k, v in part.items())
        print(f"  {row['evaluation']:<14} loss {row['loss']:.4f} nats/{unit}, perplexity "
              f"{row['ppl']:.3f}, {row['bits']:.3f} bits/{unit}  ({cost} per 1,000 tokens)"
              + (f"  [{settings}]" if settings else ""))
    chosen = report["chosen_on"] or {}
    when, where = (("now", "stored in") if report["chosen_now"] else ("earlier", "read from"))
    kept = f"{where} {report['stored_in']}" if report["stored_in"] else \
        "not stored (a bare checkpoint, not a run)"
    print(f"settings chosen {when} on the first {chosen.get('tokens', 0):,} tokens of the "
          f"run's val split, {kept}"
          + ("; this split holds the text they were chosen on, so its figures flatter them"
             if split in ("val", "all") else ""))
def _generator(args):
    """``(generate_texts(prefix, **knobs), source, step)`` of the backend asked for: onnx for
    an export, for ``--backend onnx`` (a run's export in RUN/onnx) and where torch is not
    installed, without importing torch; else torch on the checkpoint."""
    from seqlm.runtime.format import default_backend, export_dir, find_export, is_export

    path = Path(args.checkpoint)
    backend = args.backend or default_backend(path)
    if backend == "onnx":
        from seqlm import runtime

        if args.last:
            raise ConfigError("--last picks a run's checkpoint; --backend onnx reads an "
                              "exported model: drop one of them")
        found = find_export(path)
        if found is None:
            raise ConfigError(f"{path} holds no ONNX export; write one with: seqlm export "
                              f"{path} (it goes to {export_dir(path)}), or drop --backend onnx")
        return runtime.load(found).generate_many, str(found), None
    if is_export(path):
        raise ConfigError(f"{path} is an ONNX export: generate from it with --backend onnx (the "
                          "default for an export), or give the run it came from")
    from seqlm.devices import resolve_device
    from seqlm.generate import generate

    ckpt, step = _load(args, resolve_device(args.device))

    def generate_texts(prefix, **kw):
        return generate(ckpt.model, ckpt.tokenizer, prefix, **kw)

    return generate_texts, str(ckpt.path), step


def cmd_generate(args) -> int:
    check_positive_int("num_samples", args.num_samples)
    stream = not args.json and args.num_samples == 1
    knobs = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
             "top_k": args.top_k, "top_p": args.top_p, "num_samples": args.num_samples,
             "seed": args.seed, "stop": args.stop, "strict": args.strict,
             "on_text": (lambda i, piece: print(piece, end="", flush=True)) if stream else None}
    generate_texts, source, step = _generator(args)
    if stream:
        print(args.prefix, end="", flush=True)
    texts = generate_texts(args.prefix, **knobs)
    if args.json:
        print(json.dumps({"checkpoint": source, "checkpoint_step": step,
                          "prefix": args.prefix, "samples": texts}, ensure_ascii=False))
    elif stream:
        print()
    else:
        for i, text in enumerate(texts):
            print(f"--- sample {i + 1}\n{text}")
    if not args.json:  # after the text (stdout holds nothing else), once nothing can fail
        print(f"seqlm generate: {_described(source, step)}", file=sys.stderr)
    sys.stdout.flush()
    return 0
