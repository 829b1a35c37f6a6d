// The playground page: the language, the tabs, the run picker and its model card, the URL
// that keeps the view, and each tab's module.
import { $, api, fillRuns, gradientCss, installTooltip, probColour, shared,
         showError } from "./common.js";
import { renderCard } from "./card.js";
import { initGenerate } from "./generate.js";
import { language, pickLanguage, setLanguage } from "./i18n.js";
import { initSampling } from "./sampling.js";
import { initScore, relabelScore } from "./score.js";
import { initState, loadState, relabelState } from "./state.js";
import { initTime, relabelTime } from "./time.js";
import { initTraining, relabelTraining, showTraining } from "./training.js";
import { params, restoreInputs, setParam, trackInputs } from "./urlstate.js";

const TABS = ["generate", "score", "state", "time", "training", "sampling"];
let drawSampling = null;

function showTab(name) {
  const tab = TABS.includes(name) ? name : "generate";
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const section of document.querySelectorAll("section.tab")) {
    section.classList.toggle("active", section.id === `tab-${tab}`);
  }
  setParam("tab", tab === "generate" ? null : tab);
  showTraining(tab === "training");
  if (tab === "sampling" && drawSampling && !$("sampling-out").childElementCount) drawSampling();
}

function goToState(text) {
  showTab("state");
  loadState(text);
}

// The run's own texts (its validation split) in every text box the user has not edited.
function fillExamples(examples) {
  for (const box of document.querySelectorAll("textarea[data-example]")) {
    if (box.dataset.edited) continue;
    box.value = (examples && examples[box.dataset.example]) || "";
  }
}

async function selectRun(name) {
  shared.run = name;
  $("run").value = name;
  setParam("run", name === shared.runs[0].name ? null : name);
  try {
    const card = await api(`/api/runs/${encodeURIComponent(name)}/card`);
    if (shared.run !== name) return;  // another run was picked meanwhile
    renderCard(card, shared.runs.find((r) => r.name === name));
    fillExamples(card.examples);
  } catch (err) {
    showError("generate-error", err);
  }
  if ($("tab-training").classList.contains("active")) showTraining(true);
}

function switchLanguage(lang) {
  setLanguage(lang);
  $("lang").value = language();
  setParam("lang", lang === pickLanguage(new URLSearchParams()) ? null : lang);
  if (shared.card) renderCard(shared.card, shared.runs.find((r) => r.name === shared.run));
  relabelScore();
  relabelState();
  relabelTime();
  relabelTraining();
  if (drawSampling && $("sampling-out").childElementCount) drawSampling();
}

async function start() {
  setLanguage(pickLanguage(params));
  $("lang").value = language();
  restoreInputs();
  trackInputs();
  installTooltip();
  $("prob-legend").style.background = gradientCss(probColour);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  $("lang").addEventListener("change", () => switchLanguage($("lang").value));
  initGenerate(goToState);
  initScore(goToState);
  initState();
  initTime();
  initTraining();
  drawSampling = initSampling();
  try {
    const info = await api("/api/runs");
    shared.runs = info.runs;
    fillRuns($("run"), info.runs);
    fillRuns($("run_b"), info.runs, true);
    if ($("run_b").dataset.wanted) $("run_b").value = $("run_b").dataset.wanted;
    const wanted = info.runs.find((r) => r.name === params.get("run"));
    $("run").addEventListener("change", () => selectRun($("run").value));
    await selectRun((wanted || info.runs[0]).name);
  } catch (err) {
    showError("generate-error", err);
  }
  showTab(params.get("tab") || "generate");
}

start();
