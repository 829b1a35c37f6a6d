// The "Through time" tab: how the gradient of the last token's loss fades with the lag.
import { $, api, fmt, shared, showError } from "./common.js";
import { lineChart } from "./plot.js";

async function measure() {
  showError("time-error", null);
  $("gradients").disabled = true;
  try {
    const out = await api("/api/gradients", { run: shared.run, text: $("time-text").value });
    const series = [{ name: "‖∂l_T/∂h_(T−k)‖", points: out.lag.map((k, i) => [k, out.grad_norm[i]]) }];
    if (out.jacobian_norm) {
      series.push({ name: "‖J_T ⋯ J_(T−k+1)‖ (spectral)", dashed: true,
                    points: out.lag.map((k, i) => [k, out.jacobian_norm[i]]) });
    }
    lineChart($("time-chart"), series, {
      title: `gradient of the loss on the last token, ${out.num_steps} steps back`,
      xLabel: "lag k (steps back)", yLabel: "norm (log scale)", logY: true });
    const shownLags = [0, 1, 2, 5, 10, 20, 50, 100, 199].filter((k) => k < out.lag.length);
    $("time-note").textContent = shownLags.map((k) => `k=${k}: ${fmt(out.grad_norm[k], 3)}`)
      .join("   ") + `   (state size D = ${out.state_size}; last/first ${fmt(out.growth, 3)})`;
  } catch (err) {
    showError("time-error", err);
  } finally {
    $("gradients").disabled = false;
  }
}

export function initTime() {
  $("gradients").addEventListener("click", measure);
}
