// The Score tab: per-token surprisal, perplexity, unknown tokens, the bigram comparison, and
// where the neural cache or dynamic evaluation changed a token's probability.
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
  const byChange = $("score-colour").value === "change" && last.evaluation !== "static";
  const surprisals = last.tokens.map((tok) => tok.surprisal).filter((s) => s !== null);
  const max = Math.max(4, ...surprisals);
  for (const tok of last.tokens) {
    // bits a reference loses against this reading (> 0: the reading gives the token more)
    const saved = (other) => (other != null && tok.logprob !== null
      ? (tok.logprob - other) / Math.LN2 : null);
    const tip = (key, other, gain) => "; " + t(key, { b: fmt(-other / Math.LN2, 2),
      better: t(gain >= 0 ? "better" : "worse"), d: fmt(Math.abs(gain), 2) });
    const change = saved(tok.static_logprob), bigram = saved(tok.bigram_logprob);
    let colour = "transparent", extra = "";
    if (tok.surprisal !== null) extra = `, ${t("tip.surprisal", { b: fmt(tok.surprisal, 2) })}`;
    if (change !== null) extra += tip("tip.change", tok.static_logprob, change);
    if (byBigram && bigram !== null) extra += tip("tip.bigram", tok.bigram_logprob, bigram);
    if (byChange && change !== null) colour = divergingColour(-change / 4);
    else if (byBigram && bigram !== null) colour = divergingColour(-bigram / 4);
    else if (!byChange && !byBigram && tok.surprisal !== null) colour = heatColour(tok.surprisal, max);
    out.appendChild(tokenSpan(tok.text, colour, () => stepInfo(tok, extra),
                              { unknown: tok.unknown }));
  }
  $("score-legend").innerHTML = byChange
    ? `${t("score.helped")} <span class="bar" style="background:${gradientCss(
        (x) => divergingColour(2 * x - 1))}"></span> ${t("score.hurt")}`
    : byBigram
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
    summaryItem(fmt(last.perplexity, 3), `${t("perplexity")} (${last.evaluation})`),
    last.static_perplexity != null
      ? summaryItem(fmt(last.static_perplexity, 3), t("score.static-ppl")) : "",
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
    last = await api("/api/score", { run: shared.run, text, reading: $("score-reading").value });
    shared.lastText = text;
    const option = $("score-colour").querySelector('option[value="bigram"]');
    option.disabled = Boolean(last.baseline.unavailable);
    const change = $("score-colour").querySelector('option[value="change"]');
    change.disabled = last.evaluation === "static";
    if ((option.disabled && $("score-colour").value === "bigram")
        || (change.disabled && $("score-colour").value === "change")) {
      $("score-colour").value = "surprisal";
    }
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
