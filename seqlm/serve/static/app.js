// The playground page: tabs, the run picker, and each tab's module.
import { $, api, fillRuns, gradientCss, installTooltip, probColour, shared,
         showError } from "./common.js";
import { initGenerate } from "./generate.js";
import { initSampling } from "./sampling.js";
import { initScore } from "./score.js";
import { initState, loadState } from "./state.js";
import { initTime } from "./time.js";
import { initTraining, showTraining } from "./training.js";

let drawSampling = null;

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const section of document.querySelectorAll("section.tab")) {
    section.classList.toggle("active", section.id === `tab-${name}`);
  }
  showTraining(name === "training");
  if (name === "sampling" && drawSampling && !$("sampling-out").childElementCount) drawSampling();
}

function goToState(text) {
  showTab("state");
  loadState(text);
}

function describe(run) {
  return `${run.cell} ×${run.num_layers}, H=${run.hidden_size}, ${run.tokenizer} tokens, ` +
    `V=${run.vocab_size}, ${run.parameters.toLocaleString("en")} parameters`;
}

async function start() {
  installTooltip();
  $("prob-legend").style.background = gradientCss(probColour);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  initGenerate(goToState);
  initScore(goToState);
  initState();
  initTime();
  initTraining();
  drawSampling = initSampling();
  try {
    const info = await api("/api/runs");
    shared.runs = info.runs;
    shared.run = info.runs[0].name;
    fillRuns($("run"), info.runs);
    fillRuns($("run_b"), info.runs, true);
    $("runinfo").textContent = describe(info.runs[0]);
    $("run").addEventListener("change", () => {
      shared.run = $("run").value;
      $("runinfo").textContent = describe(info.runs.find((r) => r.name === shared.run));
      if ($("tab-training").classList.contains("active")) showTraining(true);
    });
  } catch (err) {
    showError("generate-error", err);
  }
}

start();
