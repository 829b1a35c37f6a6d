// The "Through time" tab: how the gradient of the last token's loss fades with the lag.
import { $, api, fmt, shared, showError } from "./common.js";
import { t } from "./i18n.js";
import { lineChart } from "./plot.js";

let last = null;

function draw() {
  if (!last) return;
  const out = last;
  const series = [{ name: "‖∂l_T/∂h_(T−k)‖", points: out.lag.map((k, i) => [k, out.grad_norm[i]]) }];
  if (out.jacobian_norm) {
    series.push({ name: t("time.spectral"), dashed: true,
                  points: out.lag.map((k, i) => [k, out.jacobian_norm[i]]) });
  }
  lineChart($("time-chart"), series, {
    title: t("time.title", { n: out.num_steps }), xLabel: t("time.x"), yLabel: t("time.y"),
    logY: true, empty: t("no-data") });
  const shownLags = [0, 1, 2, 5, 10, 20, 50, 100, 199].filter((k) => k < out.lag.length);
  $("time-note").textContent = shownLags.map((k) => `k=${k}: ${fmt(out.grad_norm[k], 3)}`)
    .join("   ") + `   (${t("time.state", { d: out.state_size, g: fmt(out.growth, 3) })}` +
    (out.unknown ? `; ${t("time.unknown", { n: out.unknown })}` : "") + ")";
}

async function measure() {
  showError("time-error", null);
  $("gradients").disabled = true;
  try {
    last = await api("/api/gradients", { run: shared.run, text: $("time-text").value });
    draw();
  } catch (err) {
    showError("time-error", err);
  } finally {
    $("gradients").disabled = false;
  }
}

export const relabelTime = draw;

export function initTime() {
  $("gradients").addEventListener("click", measure);
}
