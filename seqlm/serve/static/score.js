// The Score tab: per-token surprisal, perplexity, unknown tokens, the bigram comparison.
import { $, api, divergingColour, fmt, gradientCss, heatColour, shared, showError, stepInfo,
         tokenSpan } from "./common.js";

let last = null;

function summaryItem(value, label) {
  return `<div><b>${value}</b><span>${label}</span></div>`;
}

function render() {
  const out = $("score-tokens");
  out.innerHTML = "";
  if (!last) return;
  const byBigram = $("score-colour").value === "bigram" && last.baseline.bits_per_token !== undefined;
  const surprisals = last.tokens.map((t) => t.surprisal).filter((s) => s !== null);
  const max = Math.max(4, ...surprisals);
  for (const tok of last.tokens) {
    let colour = "transparent", extra = "";
    if (tok.surprisal !== null) extra = `, surprisal ${fmt(tok.surprisal, 2)} bits`;
    if (byBigram && tok.bigram_logprob !== null && tok.logprob !== null) {
      const gain = (tok.logprob - tok.bigram_logprob) / Math.LN2;  // bits the model saves
      colour = divergingColour(-gain / 4);
      extra += `; bigram ${fmt(-tok.bigram_logprob / Math.LN2, 2)} bits ` +
        `(model ${gain >= 0 ? "better" : "worse"} by ${fmt(Math.abs(gain), 2)})`;
    } else if (tok.surprisal !== null) {
      colour = heatColour(tok.surprisal, max);
    }
    if (tok.unknown) extra += "; outside the vocabulary: read as <unk>";
    out.appendChild(tokenSpan(tok.text, colour, () => stepInfo(tok, extra),
                              tok.unknown ? ["unk"] : []));
  }
  $("score-legend").innerHTML = byBigram
    ? `model beats the bigram <span class="bar" style="background:${gradientCss(
        (t) => divergingColour(2 * t - 1))}"></span> bigram beats the model`
    : `surprisal 0 bits <span class="bar" style="background:${gradientCss(
        (t) => heatColour(t * max, max))}"></span> ${fmt(max, 1)} bits` +
      ` · <span class="tok unk">dashed</span>: unknown token`;
}

async function score() {
  showError("score-error", null);
  $("score").disabled = true;
  try {
    const text = $("score-text").value;
    last = await api("/api/score", { run: shared.run, text });
    shared.lastText = text;
    const b = last.baseline;
    const option = $("score-colour").querySelector('option[value="bigram"]');
    option.disabled = Boolean(b.unavailable);
    if (option.disabled) $("score-colour").value = "surprisal";
    $("score-summary").innerHTML = [
      summaryItem(fmt(last.perplexity, 3), "perplexity"),
      summaryItem(fmt(last.bits_per_token, 3), "bits / token"),
      summaryItem(last.tokens.length, "tokens"),
      summaryItem(last.unknown, "unknown tokens"),
      b.unavailable ? `<div class="note">${b.unavailable}</div>`
        : summaryItem(`${fmt(b.perplexity, 3)} · ${fmt(b.bits_per_token, 3)}`,
                      `${b.name}: perplexity · bits/token`),
    ].join("");
    render();
  } catch (err) {
    showError("score-error", err);
  } finally {
    $("score").disabled = false;
  }
}

export function initScore(goToState) {
  $("score").addEventListener("click", score);
  $("score-colour").addEventListener("change", render);
  $("score-inspect").addEventListener("click", () => goToState($("score-text").value));
}
