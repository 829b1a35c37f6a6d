// The Score tab: per-token surprisal, perplexity, unknown tokens, the bigram comparison.
import { $, api, divergingColour, escapeHtml, fmt, gradientCss, heatColour, shared,
         showError, stepInfo, tokenSpan } from "./common.js";
import { t } from "./i18n.js";

let last = null;

function summaryItem(value, label) {
  return `<div><b>${value}</b><span>${escapeHtml(label)}</span></div>`;
}

function render() {
  const out = $("score-tokens");
  out.innerHTML = "";
  if (!last) return;
  const byBigram = $("score-colour").value === "bigram" && last.baseline.bits_per_token !== undefined;
  const surprisals = last.tokens.map((tok) => tok.surprisal).filter((s) => s !== null);
  const max = Math.max(4, ...surprisals);
  for (const tok of last.tokens) {
    let colour = "transparent", extra = "";
    if (tok.surprisal !== null) extra = `, ${t("tip.surprisal", { b: fmt(tok.surprisal, 2) })}`;
    if (byBigram && tok.bigram_logprob !== null && tok.logprob !== null) {
      const gain = (tok.logprob - tok.bigram_logprob) / Math.LN2;  // bits the model saves
      colour = divergingColour(-gain / 4);
      extra += "; " + t("tip.bigram", { b: fmt(-tok.bigram_logprob / Math.LN2, 2),
                                        better: t(gain >= 0 ? "better" : "worse"),
                                        d: fmt(Math.abs(gain), 2) });
    } else if (tok.surprisal !== null) {
      colour = heatColour(tok.surprisal, max);
    }
    out.appendChild(tokenSpan(tok.text, colour, () => stepInfo(tok, extra),
                              { unknown: tok.unknown }));
  }
  $("score-legend").innerHTML = byBigram
    ? `${t("score.beats")} <span class="bar" style="background:${gradientCss(
        (x) => divergingColour(2 * x - 1))}"></span> ${t("score.loses")}`
    : `${t("score.surprisal0")} <span class="bar" style="background:${gradientCss(
        (x) => heatColour(x * max, max))}"></span> ${fmt(max, 1)} bits` +
      ` · <span class="tok unk">${t("dashed")}</span>${escapeHtml(t("unknown-means"))}`;
}

function summary() {
  if (!last) return;
  const b = last.baseline;
  $("score-summary").innerHTML = [
    summaryItem(fmt(last.perplexity, 3), t("perplexity")),
    summaryItem(fmt(last.bits_per_token, 3), t("bits")),
    summaryItem(last.tokens.length, t("tokens")),
    summaryItem(last.unknown, t("unknown")),
    b.unavailable ? `<div class="note">${escapeHtml(b.unavailable)}</div>`
      : summaryItem(`${fmt(b.perplexity, 3)} · ${fmt(b.bits_per_token, 3)}`,
                    t("score.baseline", { name: b.name })),
  ].join("");
}

async function score() {
  showError("score-error", null);
  $("score").disabled = true;
  try {
    const text = $("score-text").value;
    last = await api("/api/score", { run: shared.run, text });
    shared.lastText = text;
    const option = $("score-colour").querySelector('option[value="bigram"]');
    option.disabled = Boolean(last.baseline.unavailable);
    if (option.disabled) $("score-colour").value = "surprisal";
    summary();
    render();
  } catch (err) {
    showError("score-error", err);
  } finally {
    $("score").disabled = false;
  }
}

export function relabelScore() {
  summary();
  render();
}

export function initScore(goToState) {
  $("score").addEventListener("click", score);
  $("score-colour").addEventListener("change", render);
  $("score-inspect").addEventListener("click", () => goToState($("score-text").value));
}
