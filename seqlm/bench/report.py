"""The report of :func:`seqlm.bench.run_bench` as a plain-text table (returned, not printed)."""

from __future__ import annotations


def _num(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def format_report(report: dict) -> str:
    """The table ``seqlm bench`` prints: machine, training, generation, encoding."""
    m, cfg = report["machine"], report["config"]
    lines = [f"machine: {m['cpu']} ({m['cores']} cores), {m['device']}"
             f"{' ' + m['gpu'] if m.get('gpu') else ''}, torch {m['torch']}, "
             f"{m['threads']} threads"]
    peaks = report.get("peaks") or {}
    if peaks:
        onednn = peaks.get("float32_onednn")
        lines.append(f"GEMM peak ({cfg['peak_size']}^3): float32 {peaks['float32_mm']:.0f} "
                     f"GFLOP/s (torch.mm){f', {onednn:.0f} (oneDNN)' if onednn else ''}; "
                     f"bfloat16 {peaks['bfloat16']:.0f}; roof = {peaks['float32']:.0f} float32, "
                     f"{peaks['bfloat16']:.0f} bfloat16")
    if report["train"]:
        lines += ["", f"training: tokens/s = batch x num_steps per step; medians of "
                  f"{cfg['rounds']} interleaved rounds of {cfg['steps_per_round']} steps; "
                  "x = median per-round speed ratio; * = the path seqlm's presets run "
                  "(impl and bptt_engine 'auto')"]
    for block in report["train"]:
        w = block["workload"]
        G = {"rnn": 1, "gru": 3, "lstm": 4}[w["cell"]]
        lines.append(f"\n{w['name']}: V={w['vocab_size']} H={w['hidden_size']} "
                     f"B={w['batch_size']} T={w['num_steps']}, "
                     f"{block['flops_per_token'] / 1e6:.2f} MFLOP/token, step GEMM "
                     f"{w['batch_size']}x{w['hidden_size']}x{G * w['hidden_size']} at "
                     f"{block['step_gemm_gflops']:.0f} GFLOP/s")
        lines.append(f"  {'path':<26}{'ms/step':>8}{'tokens/s':>10}{'x book':>8}"
                     f"{'x torch':>8}{'GFLOP/s':>8}{'roof':>6}{'peak MB':>8}")
        for r in block["paths"]:
            path = r["path"] + (" *" if r.get("default") else "")
            lines.append(f"  {path:<26}{r['ms_per_step']:>8.1f}{r['tokens_per_s']:>10,.0f}"
                         f"{r['vs_textbook']:>8.2f}{r['vs_torch']:>8.2f}{r['gflops']:>8.1f}"
                         f"{_num(r['roofline'], '.2f', 6)}{_num(r['peak_mb'], '.1f', 8)}")
    if report["generate"]:
        first = report["generate"][0]
        lines += ["", f"generation: one stream, greedy, {first['new_tokens']} tokens after a "
                  f"{first['prefix']}-token prefix; medians of {cfg['gen_rounds']} rounds",
                  f"  {'workload':<11}{'path':<16}{'tokens/s':>10}{'ms/token':>9}"
                  f"{'x book':>8}{'peak MB':>8}"]
        for block in report["generate"]:
            for r in block["paths"]:
                lines.append(f"  {block['workload']['name']:<11}{r['path']:<16}"
                             f"{r['tokens_per_s']:>10,.0f}{r['ms_per_token']:>9.3f}"
                             f"{r['vs_textbook']:>8.2f}{_num(r['peak_mb'], '.1f', 8)}")
    if report["encode"]:
        lines += ["", f"encoding a synthetic {report['encode'][0]['text_mb']:.0f} MB text",
                  f"  {'tokenizer':<10}{'MB/s':>8}{'tokens':>13}{'vocab':>7}{'peak MB':>9}"
                  f"{'(text+peak)/text':>18}"]
        for r in report["encode"]:
            lines.append(f"  {r['tokenizer']:<10}{r['mb_per_s']:>8.1f}{r['tokens']:>13,}"
                         f"{r['vocab_size']:>7,}{_num(r['peak_mb'], '.0f', 9)}"
                         f"{_num(r['peak_ratio'], '.2f', 18)}")
    rss = report.get("peak_rss_mb")
    lines += ["", f"process peak RSS {_num(rss, '.0f', 0)} MB; {report['seconds']:.0f} s"]
    return "\n".join(lines)
