// The model card above the tabs: what the selected run is (GET /api/runs/{name}/card).
import { $, escapeHtml, fmt, shared } from "./common.js";
import { number, t } from "./i18n.js";

function row(label, value) {
  return `<div class="cardrow"><span class="note">${escapeHtml(label)}</span>` +
    `<span>${value}</span></div>`;
}

function budget(b) {
  const parts = [];
  if (b.time_budget) parts.push(t("card.seconds", { n: number(b.time_budget) }));
  if (b.max_steps) parts.push(t("card.steps", { n: number(b.max_steps) }));
  if (b.epochs) parts.push(t("card.epochs", { n: number(b.epochs) }));
  return parts.length ? parts.join(", ") : t("card.unknown");
}

function recipe(r) {
  const chosen = Object.entries(r.chosen || {}).map(([k, v]) => `${k} ${v}`);
  const preset = r.preset ? `--preset ${r.preset}` : "";
  return escapeHtml([preset, ...chosen].filter(Boolean).join(" · ") || t("card.none"));
}

// One line for the summary (always visible), the rows for the opened card.
export function renderCard(card, run) {
  shared.card = card;
  const c = card.corpus, m = card.model, v = card.validation, b = card.baselines;
  const tokens = c.tokens ? t("card.tokens", { train: number(c.tokens.train || 0),
                                                val: number(c.tokens.val || 0) }) : "";
  const params = run && run.parameters ? ` · ${t("card.params", { p: number(run.parameters) })}`
    : "";
  const modelText = `${m.cell} ×${m.num_layers}, H=${m.hidden_size}, ` +
    `embedding ${m.embedding_dim ?? "–"}, dropout ${m.dropout ?? "–"}${params} (${card.backend})`;
  const trained = card.trained ? t("card.trained-v", {
    steps: number(card.trained.steps ?? 0), tokens: number(card.trained.tokens ?? 0),
    s: fmt(card.trained.seconds ?? NaN, 1) }) : t("card.unknown");
  const val = v ? t("card.vs", { ppl: fmt(v.perplexity, 2), step: v.step ?? "–",
                                 uni: b.unavailable ? "–" : fmt(b.unigram, 2),
                                 bi: b.unavailable ? "–" : fmt(b.bigram, 2) })
    : t("card.unknown");
  const corpusName = (c.name || "?").split(/[\\/]/).pop();
  $("card-title").textContent = card.name;
  $("card-line").textContent = [
    c.tokens ? `${corpusName} (${number(c.tokens.train || 0)})` : corpusName,
    t("card.tokenizer", { kind: card.tokenizer.kind, v: number(card.tokenizer.vocab_size) }),
    `${m.cell} ×${m.num_layers} H=${m.hidden_size}`,
    card.trained ? t("card.trained-v", { steps: number(card.trained.steps ?? 0),
      tokens: number(card.trained.tokens ?? 0), s: fmt(card.trained.seconds ?? NaN, 1) }) : "",
    `${t("card.val")} ${val}`,
  ].filter(Boolean).join(" · ");
  $("card-body").innerHTML = [
    row(t("card.corpus"), escapeHtml(`${c.name || "?"} — ${tokens}`)),
    row(t("card.model"), escapeHtml(`${modelText}; ${t("card.tokenizer", {
      kind: card.tokenizer.kind, v: number(card.tokenizer.vocab_size) })}`)),
    row(t("card.budget"), escapeHtml(budget(card.budget))),
    row(t("card.trained"), escapeHtml(trained)),
    row(t("card.val"), escapeHtml(val) + (b.unavailable
      ? ` <span class="note">(${escapeHtml(b.unavailable)})</span>` : "")),
    row(t("card.recipe"), recipe(card.recipe)),
    row(t("card.use"), `<pre class="snippet">${escapeHtml(card.use.python)}</pre>` +
      `<pre class="snippet">${escapeHtml(card.use.cli)}</pre>`),
  ].join("");
}
