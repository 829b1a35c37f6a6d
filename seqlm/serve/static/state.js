// The "Inside the state" tab: hidden units × time as a heatmap; a unit colours the text.
import { $, api, divergingColour, fmt, gradientCss, shared, showError, tokenSpan } from "./common.js";

let data = null;
let chosen = null;  // [layer, unit]
let geometry = null;

// Blue (-1) .. white (0) .. red (+1) as RGB bytes, for the heatmap's pixels.
function rgb(v) {
  const t = Math.max(-1, Math.min(1, v));
  const a = Math.abs(t);
  return t >= 0 ? [255, Math.round(255 * (1 - 0.85 * a)), Math.round(255 * (1 - 0.85 * a))]
                : [Math.round(255 * (1 - 0.85 * a)), Math.round(255 * (1 - 0.55 * a)), 255];
}

function layer() { return Number($("state-layer").value || 0); }

function draw() {
  const canvas = $("heatmap");
  const h = data.states[layer()];  // (N, H)
  const n = h.length, units = data.hidden_size;
  const cellW = Math.max(2, Math.min(24, Math.floor(1100 / n)));
  const cellH = Math.max(1, Math.min(10, Math.floor(360 / units)));
  canvas.width = n * cellW;
  canvas.height = units * cellH;
  const ctx = canvas.getContext("2d");
  const pixels = new ImageData(n, units);
  for (let t = 0; t < n; t++) {
    for (let u = 0; u < units; u++) {
      const [r, g, b] = rgb(h[t][u]);
      const i = 4 * (u * n + t);
      pixels.data[i] = r; pixels.data[i + 1] = g; pixels.data[i + 2] = b; pixels.data[i + 3] = 255;
    }
  }
  const small = document.createElement("canvas");
  small.width = n; small.height = units;
  small.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  if (chosen && chosen[0] === layer()) {
    ctx.strokeStyle = "#1d232b";
    ctx.lineWidth = 2;
    ctx.strokeRect(1, chosen[1] * cellH - 1, canvas.width - 2, cellH + 2);
  }
  geometry = { cellH, units };
  $("state-note").textContent = `layer ${layer()}: ${units} units (rows) × ${n} tokens ` +
    "(columns); click a row to pick a unit";
}

function colourText() {
  const out = $("state-tokens");
  out.innerHTML = "";
  const [l, u] = chosen || [layer(), null];
  data.tokens.forEach((text, t) => {
    const v = u === null ? 0 : data.states[l][t][u];
    const info = () => u === null ? "pick a unit" :
      `<div class="head">${JSON.stringify(text)}: layer ${l} unit ${u} = ${fmt(v, 3)}</div>`;
    out.appendChild(tokenSpan(text, u === null ? "transparent" : divergingColour(v), info));
  });
  $("unit-label").textContent = u === null ? "" : `text coloured by layer ${l}, unit ${u}`;
}

export function selectUnit(l, u) {
  chosen = [l, u];
  if (layer() !== l) $("state-layer").value = String(l);
  draw();
  colourText();
}

function rankingList(title, rows, label) {
  const items = rows.map(([l, u, v]) =>
    `<li data-layer="${l}" data-unit="${u}">L${l} u${u} · ${label} ${fmt(v, 3)}</li>`).join("");
  return `<div><h4>${title}</h4>${rows.length ? `<ol>${items}</ol>`
    : '<div class="note">constant on this text</div>'}</div>`;
}

function showRankings() {
  const r = data.ranking;
  const parts = [rankingList("by variance over the text", r.variance, "var")];
  for (const [feature, rows] of Object.entries(r.correlation)) {
    parts.push(rankingList(`by correlation with “${feature}”`, rows, "r"));
  }
  $("rankings").innerHTML = parts.join("");
}

async function read() {
  showError("state-error", null);
  $("states").disabled = true;
  try {
    data = await api("/api/states", { run: shared.run, text: $("state-text").value });
    const select = $("state-layer");
    select.innerHTML = "";
    for (let l = 0; l < data.layers; l++) select.add(new Option(String(l), String(l)));
    const [l, u] = data.ranking.variance[0];
    showRankings();
    selectUnit(l, u);
  } catch (err) {
    showError("state-error", err);
  } finally {
    $("states").disabled = false;
  }
}

export function loadState(text) {
  if (text) $("state-text").value = text;
  return read();
}

export function initState() {
  $("act-legend").style.background = gradientCss((t) => divergingColour(2 * t - 1));
  $("states").addEventListener("click", read);
  $("state-layer").addEventListener("change", () => { if (data) { draw(); colourText(); } });
  $("heatmap").addEventListener("click", (e) => {
    if (!data || !geometry) return;
    const box = e.target.getBoundingClientRect();
    const y = (e.clientY - box.top) * (e.target.height / box.height);
    selectUnit(layer(), Math.max(0, Math.min(geometry.units - 1, Math.floor(y / geometry.cellH))));
  });
  $("rankings").addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (li) selectUnit(Number(li.dataset.layer), Number(li.dataset.unit));
  });
}
