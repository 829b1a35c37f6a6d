// The Training tab: a run's curves and samples, re-read every few seconds while visible.
import { $, api, shared, showError } from "./common.js";
import { lineChart } from "./plot.js";

const REFRESH_MS = 3000;
let timer = null;

function series(records, kind, x, y) {
  return records.filter((r) => r.kind === kind && r[x] !== undefined && r[y] !== undefined &&
                         r[y] !== null).map((r) => [r[x], r[y]]);
}

// Recovery records (a divergence the trainer rolled back) carry a step, not tokens: place
// them at the tokens of the nearest training record at or before that step.
function markers(records, x) {
  const train = records.filter((r) => r.kind === "train");
  return records.filter((r) => r.kind === "recovery").map((r) => {
    const before = train.filter((t) => t.step <= r.step).pop() || train[0];
    const at = x === "elapsed" ? r.elapsed : (before ? before.tokens : 0);
    return { x: at, label: `recovery at step ${r.step}` };
  });
}

function draw(history) {
  const x = $("train-x").value;
  const records = history.records;
  const xLabel = x === "tokens" ? "tokens seen" : "seconds";
  const marks = markers(records, x);
  lineChart($("chart-ppl"), [
    { name: "train perplexity", points: series(records, "train", x, "ppl") },
    { name: "validation perplexity", points: series(records, "eval", x, "val_ppl") },
  ], { title: "perplexity", xLabel, yLabel: "perplexity (log)", logY: true, markers: marks });
  lineChart($("chart-lr"), [{ name: "learning rate", points: series(records, "train", x, "lr") }],
            { title: "learning rate", xLabel, yLabel: "lr", markers: marks });
  lineChart($("chart-grad"), [
    { name: "gradient norm (mean)", points: series(records, "train", x, "grad_norm") },
    { name: "gradient norm (max)", points: series(records, "train", x, "grad_norm_max"),
      dashed: true },
  ], { title: "gradient norm before clipping", xLabel, yLabel: "‖g‖ (log)", logY: true,
       markers: marks });
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
  if (!history.samples.length) box.textContent = "no samples.txt (yet)";
  const steps = records.filter((r) => r.kind === "train").map((r) => r.step);
  $("train-status").textContent = `${records.length} records, last step ` +
    `${steps.length ? steps[steps.length - 1] : "–"}; refreshed ` +
    `${new Date().toLocaleTimeString()} (every ${REFRESH_MS / 1000} s while this tab is open)`;
}

async function refresh() {
  try {
    draw(await api(`/api/runs/${encodeURIComponent(shared.run)}/metrics`));
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

export function initTraining() {
  $("train-x").addEventListener("change", refresh);
}
