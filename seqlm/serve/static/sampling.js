// The Sampling strategies tab: the chapter's corpus 0..N-1 cut into minibatches two ways.
import { $, api, escapeHtml, showError } from "./common.js";
import { t } from "./i18n.js";

const HUES = [210, 30, 130, 280, 0, 180, 60, 330, 100, 250];

function cell(value, hue) {
  const div = document.createElement("div");
  div.className = "cell";
  div.textContent = value;
  if (hue !== null) div.style.background = `hsl(${hue}, 70%, 84%)`;
  return div;
}

function strategy(name, plan, numSteps, n) {
  const box = document.createElement("div");
  box.className = "strategy";
  const title = t(name === "random" ? "samp.random" : "samp.sequential");
  box.innerHTML = `<h3>${escapeHtml(title)} <span class="note">${escapeHtml(t("samp.summary", {
    c: plan.contiguous, n: plan.starts.length }))}</span></h3>`;
  const owner = new Array(n).fill(null);  // which minibatch reads each token as X
  plan.starts.forEach((rows, k) => rows.forEach((s) => {
    for (let t = s; t < s + numSteps; t++) owner[t] = k;
  }));
  const corpus = document.createElement("div");
  corpus.className = "corpus";
  owner.forEach((k, t) => corpus.appendChild(cell(t, k === null ? null : HUES[k % HUES.length])));
  box.appendChild(corpus);
  plan.starts.forEach((rows, k) => {
    const batch = document.createElement("div");
    batch.className = "batch";
    batch.innerHTML = `<div class="label">${escapeHtml(t("samp.minibatch", { k }))}</div>`;
    rows.forEach((s, b) => {
      const row = document.createElement("div");
      row.className = "row";
      for (let t = s; t < s + numSteps; t++) row.appendChild(cell(t, HUES[k % HUES.length]));
      const state = document.createElement("span");
      const carried = plan.contiguous && k > 0;
      state.className = `state ${carried ? "carry" : "reset"}`;
      state.textContent = carried ? t("samp.carry", { k: k - 1, b }) : t("samp.reset");
      row.appendChild(state);
      batch.appendChild(row);
    });
    box.appendChild(batch);
  });
  return box;
}

async function draw() {
  showError("sampling-error", null);
  const q = new URLSearchParams({ n_tokens: $("s-n").value, batch_size: $("s-batch").value,
                                  num_steps: $("s-steps").value, seed: $("s-seed").value });
  try {
    const out = await api(`/api/sampling?${q}`);
    const target = $("sampling-out");
    target.innerHTML = "";
    for (const [name, plan] of Object.entries(out.strategies)) {
      target.appendChild(strategy(name, plan, out.num_steps, out.n_tokens));
    }
  } catch (err) {
    showError("sampling-error", err);
  }
}

export function initSampling() {
  $("sampling").addEventListener("click", draw);
  return draw;
}
