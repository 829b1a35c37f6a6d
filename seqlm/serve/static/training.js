// The Training tab: a run's curves and samples, re-read every few seconds while visible,
// with the unigram and bigram baselines of its validation split drawn as levels.
import { $, api, shared, showError } from "./common.js";
import { language, t } from "./i18n.js";
import { lineChart } from "./plot.js";

const REFRESH_MS = 3000;
let timer = null;
let history = null;

function series(records, kind, x, y) {
  return records.filter((r) => r.kind === kind && r[x] !== undefined && r[y] !== undefined &&
                         r[y] !== null).map((r) => [r[x], r[y]]);
}

// Recovery records (a divergence the trainer rolled back) carry a step, not tokens: place
// them at the tokens of the nearest training record at or before that step.
function markers(records, x) {
  const train = records.filter((r) => r.kind === "train");
  return records.filter((r) => r.kind === "recovery").map((r) => {
    const before = train.filter((k) => k.step <= r.step).pop() || train[0];
    const at = x === "elapsed" ? r.elapsed : (before ? before.tokens : 0);
    return { x: at, label: t("train.recovery", { s: r.step }) };
  });
}

function baselineLevels() {
  const b = shared.card && shared.card.baselines;
  if (!b || b.unavailable) return [];
  return [{ y: b.unigram, label: `${t("train.unigram")} ${b.unigram.toFixed(2)}`, colour: "#8a6d3b" },
          { y: b.bigram, label: `${t("train.bigram")} ${b.bigram.toFixed(2)}`, colour: "#6b4fa0" }];
}

function draw() {
  if (!history) return;
  const x = $("train-x").value;
  const records = history.records;
  const xLabel = x === "tokens" ? t("train.seen") : t("train.seconds");
  const marks = markers(records, x);
  const empty = t("no-data");
  lineChart($("chart-ppl"), [
    { name: t("train.train-ppl"), points: series(records, "train", x, "ppl") },
    { name: t("train.val-ppl"), points: series(records, "eval", x, "val_ppl") },
  ], { title: t("train.ppl"), xLabel, yLabel: t("train.ppl-y"), logY: true, markers: marks,
       levels: baselineLevels(), empty });
  lineChart($("chart-lr"), [{ name: t("train.lr"), points: series(records, "train", x, "lr") }],
            { title: t("train.lr"), xLabel, yLabel: "lr", markers: marks, empty });
  lineChart($("chart-grad"), [
    { name: t("train.grad-mean"), points: series(records, "train", x, "grad_norm") },
    { name: t("train.grad-max"), points: series(records, "train", x, "grad_norm_max"),
      dashed: true },
  ], { title: t("train.grad"), xLabel, yLabel: "‖g‖ (log)", logY: true, markers: marks,
       empty });
  const box = $("samples");
  box.innerHTML = "";
  for (const s of history.samples.slice().reverse()) {
    const title = document.createElement("div");
    title.className = "note";
    title.textContent = `step ${s.step}`;
    const pre = document.createElement("pre");
    pre.textContent = s.text;
    box.append(title, pre);
  }
  if (!history.samples.length) box.textContent = t("train.no-samples");
  const steps = records.filter((r) => r.kind === "train").map((r) => r.step);
  $("train-status").textContent = t("train.status", {
    n: records.length, s: steps.length ? steps[steps.length - 1] : "–",
    time: new Date().toLocaleTimeString(language() === "zh" ? "zh-CN" : "en"),
    every: REFRESH_MS / 1000 });
}

async function refresh() {
  try {
    history = await api(`/api/runs/${encodeURIComponent(shared.run)}/metrics`);
    draw();
    showError("training-error", null);
  } catch (err) {
    showError("training-error", err);
  }
}

export function showTraining(visible) {
  clearInterval(timer);
  timer = null;
  if (visible) {
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }
}

export const relabelTraining = draw;

export function initTraining() {
  $("train-x").addEventListener("change", draw);
}
