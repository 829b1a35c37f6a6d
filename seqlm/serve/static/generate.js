// The Generate tab: stream tokens from one or two runs, coloured by their probability.
import { $, ApiError, fmt, probColour, readLines, shared, showError, stepInfo,
         tokenSpan } from "./common.js";
import { t } from "./i18n.js";

let controller = null;

function numberOrNull(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function request(run) {
  return {
    run, prefix: $("prefix").value, temperature: Number($("temperature").value),
    top_k: numberOrNull("top_k"), top_p: numberOrNull("top_p"), seed: numberOrNull("seed"),
    max_new_tokens: Number($("max_new_tokens").value), greedy: $("greedy").checked,
  };
}

function panel(run) {
  const box = document.createElement("div");
  box.className = "card panel";
  box.innerHTML = `<h3></h3><div class="tokens"></div><div class="stats"></div>`;
  box.querySelector("h3").textContent = run;
  $("gen-panels").appendChild(box);
  return { tokens: box.querySelector(".tokens"), stats: box.querySelector(".stats") };
}

function addStep(target, step, warm) {
  const colour = step.prob === null ? "transparent" : probColour(step.prob);
  target.appendChild(tokenSpan(step.text, colour, () => stepInfo(step),
                               { classes: warm ? ["warm"] : [], unknown: step.unknown }));
}

async function streamInto(run, view, signal) {
  const t0 = performance.now();
  let first = null, count = 0, text = "";
  let response;
  try {
    response = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request(run)), signal });
  } catch (err) {
    if (signal.aborted) return "";
    throw new ApiError(t("err.server", { m: err.message }));
  }
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new ApiError(data.error || `HTTP ${response.status}`);
  }
  await readLines(response, (line) => {
    if (line.type === "prefix") {
      for (const step of line.tokens) { addStep(view.tokens, step, true); text += step.text; }
    } else if (line.type === "token") {
      if (first === null) first = performance.now() - t0;
      count += 1;
      text += line.text;
      addStep(view.tokens, line, false);
    } else if (line.type === "error") {
      throw new ApiError(line.error);
    }
    const seconds = (performance.now() - t0) / 1000;
    view.stats.textContent = t("gen.stats", { n: count, s: fmt(seconds, 2) }) +
      (first === null ? "" : t("gen.first", { ms: fmt(first, 0),
                                              rate: fmt(count / Math.max(seconds, 1e-3), 0) }));
  }, signal);
  return text;
}

async function generate() {
  showError("generate-error", null);
  $("gen-panels").innerHTML = "";
  const runs = [shared.run, $("run_b").value].filter((r, i, all) => r && all.indexOf(r) === i);
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  try {
    const views = runs.map(panel);
    if (window.innerWidth < 700) $("gen-panels").scrollIntoView({ block: "start" });  // a phone
    const texts = await Promise.all(runs.map((run, i) => streamInto(run, views[i],
                                                                    controller.signal)));
    if (texts[0]) shared.lastText = texts[0];
  } catch (err) {
    if (err.name !== "AbortError") showError("generate-error", err);  // Stop is not an error
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

export function initGenerate(goToState) {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("gen-inspect").addEventListener("click", () => goToState(shared.lastText));
}
