// The "Inside the state" tab: hidden units × time as a heatmap (an LSTM's cell state c
// beside h), with the tokens along the time axis, a value under the pointer, rows sorted by
// any ranking, one colour scale for all units or one per unit, and a threshold that
// highlights where a unit fires; a unit colours the text.
import { $, api, divergingColour, divergingRgb, escapeHtml, fmt, gradientCss, shared, showError,
         showTip, tokenSpan } from "./common.js";
import { t } from "./i18n.js";
import { CANVAS_FONT } from "./plot.js";

const LEFT = 40;   // room for the unit numbers
const TOP = 64;    // room for the token labels
let data = null;
let chosen = null;  // [layer, unit]
const geometry = {};  // canvas id -> where its cells are

function layer() { return Number($("state-layer").value || 0); }
function threshold() { return Number($("state-threshold").value); }

// What a token looks like as a column label.
function label(text) {
  return text.replace(/\n/g, "↵").replace(/ /g, "␣").replace(/\t/g, "⇥");
}

// Unit order for the heatmap rows: by unit number, or by a ranking's score (largest
// absolute first), the same order for h and c so that a unit's rows line up.
function order(l) {
  const key = $("state-sort").value;
  const units = [...Array(data.hidden_size).keys()];
  const scores = key && key !== "unit" ? data.ranking.scores[key] : null;
  if (!scores) return units;
  return units.sort((a, b) => Math.abs(scores[l][b]) - Math.abs(scores[l][a]) || a - b);
}

// The value that maps to the ends of the colour scale: 1 for h (tanh's range) and the
// largest |c| for an LSTM's cell state; per unit, each unit's own largest |value|.
function scales(values, isCell) {
  const units = data.hidden_size;
  const perUnit = $("state-scale").value === "unit";
  let overall = 1;
  if (isCell) overall = Math.max(1e-6, ...values.map((row) => Math.max(...row.map(Math.abs))));
  const out = new Array(units).fill(overall);
  if (perUnit) {
    for (let u = 0; u < units; u++) {
      out[u] = Math.max(1e-6, ...values.map((row) => Math.abs(row[u])));
    }
  }
  return out;
}

function rowHeight(units) {
  const zoom = $("state-zoom").value;
  return zoom === "auto" ? Math.max(3, Math.min(14, Math.floor(420 / units))) : Number(zoom);
}

function drawMap(canvas, values, isCell) {
  const n = values.length, units = data.hidden_size, l = layer();
  const rows = order(l), scale = scales(values, isCell), cut = threshold();
  const avail = Math.max(300, canvas.parentElement.clientWidth - LEFT - 4);
  const cellW = Math.max(11, Math.min(24, Math.floor(avail / n)));
  const cellH = rowHeight(units);
  canvas.width = LEFT + n * cellW;
  canvas.height = TOP + units * cellH;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  rows.forEach((u, r) => {
    for (let col = 0; col < n; col++) {
      const v = values[col][u] / scale[u];
      let rgb = divergingRgb(v);
      if (Math.abs(v) < cut) rgb = rgb.map((c) => Math.round(c + (255 - c) * 0.75));  // faded
      ctx.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
      ctx.fillRect(LEFT + col * cellW, TOP + r * cellH, cellW, cellH);
    }
  });
  drawLabels(ctx, rows, n, cellW, cellH);
  geometry[canvas.id] = { left: LEFT, top: TOP, cellW, cellH, n, rows, values, isCell };
  canvas.dataset.geometry = JSON.stringify({ left: LEFT, top: TOP, cellW, cellH, n });
}

function drawLabels(ctx, rows, n, cellW, cellH) {
  ctx.font = `11px ${CANVAS_FONT}`;
  ctx.textBaseline = "middle";
  data.tokens.forEach((text, col) => {
    ctx.save();
    ctx.translate(LEFT + (col + 0.5) * cellW, TOP - 4);
    ctx.rotate(-Math.PI / 3);
    ctx.fillStyle = data.unknown[col] ? "#b3261e" : "#1d232b";
    ctx.fillText(label(text).slice(0, 8), 0, 0);
    ctx.restore();
  });
  ctx.fillStyle = "#5d6874";
  ctx.textAlign = "right";
  const every = Math.max(1, Math.ceil(12 / cellH));
  const pickedRow = chosen && chosen[0] === layer() ? rows.indexOf(chosen[1]) : -1;
  rows.forEach((u, r) => {
    const picked = r === pickedRow;
    const clear = pickedRow < 0 || Math.abs(r - pickedRow) * cellH >= 12;  // no overlap
    if ((r % every === 0 && clear) || picked) {
      ctx.fillStyle = picked ? "#1d232b" : "#5d6874";
      ctx.fillText(String(u), LEFT - 4, TOP + (r + 0.5) * cellH);
    }
    if (picked) {
      ctx.strokeStyle = "#1d232b";
      ctx.lineWidth = 2;
      ctx.strokeRect(LEFT - 1, TOP + r * cellH - 1, n * cellW + 2, cellH + 2);
    }
  });
  ctx.textAlign = "left";
}

function draw() {
  const l = layer();
  drawMap($("heatmap"), data.states[l], false);
  $("c-figure").hidden = !data.cells;
  if (data.cells) drawMap($("cellmap"), data.cells[l], true);
  const sortName = $("state-sort").selectedOptions[0]?.textContent || "";
  $("state-note").textContent = t("state.shape", { l, h: data.hidden_size,
                                                   n: data.tokens.length, sort: sortName });
  $("h-caption").textContent = t("state.h");
  $("c-caption").textContent = t("state.c");
  const perUnit = $("state-scale").value === "unit";
  const cMax = data.cells && !perUnit ? fmt(scales(data.cells[l], true)[0], 2) : null;
  $("scale-low").textContent = perUnit ? "−max" : "−1";
  $("scale-high").textContent = perUnit ? "+max" : (cMax ? `+1 (c: ±${cMax})` : "+1");
}

function colourText() {
  const out = $("state-tokens");
  out.innerHTML = "";
  const [l, u] = chosen || [layer(), null];
  const scale = u === null ? 1 : scales(data.states[l], false)[u];
  const cut = threshold();
  data.tokens.forEach((text, i) => {
    const v = u === null ? 0 : data.states[l][i][u];
    const fires = u !== null && Math.abs(v / scale) >= cut;
    const info = () => u === null ? t("state.pick") : `<div class="head">${escapeHtml(
      t("state.cell", { l, u, i, tok: JSON.stringify(text), v: fmt(v, 3) }))}</div>`;
    out.appendChild(tokenSpan(text, u === null ? "transparent" : divergingColour(v / scale),
                              info, { classes: fires ? ["fires"] : [],
                                      unknown: data.unknown[i] }));
  });
  $("unit-label").textContent = u === null ? "" : t("state.coloured", { l, u, t: cut });
}

export function selectUnit(l, u) {
  chosen = [l, u];
  if (layer() !== l) $("state-layer").value = String(l);
  draw();
  colourText();
}

function rankingList(title, rows, sign) {
  const items = rows.map(([l, u, v]) =>
    `<li data-layer="${l}" data-unit="${u}">L${l} u${u} · ${sign} ${fmt(v, 3)}</li>`).join("");
  return `<div><h4>${escapeHtml(title)}</h4>${rows.length ? `<ol>${items}</ol>`
    : `<div class="note">${t("state.no-units")}</div>`}</div>`;
}

function showRankings() {
  if (!data) return;
  const parts = [];
  for (const [which, r] of [["h", data.ranking], ["c", data.cell_ranking]]) {
    if (!r) continue;
    const tag = data.cells ? `${which} · ` : "";
    parts.push(rankingList(tag + t("state.by-variance"), r.variance, "var"));
    for (const [feature, rows] of Object.entries(r.correlation)) {
      parts.push(rankingList(tag + t("state.by-feature", { f: t(`feature.${feature}`) }),
                             rows, "r"));
    }
  }
  $("rankings").innerHTML = parts.join("");
}

function fillSorts() {
  const select = $("state-sort");
  const keep = select.value || select.dataset.wanted || "variance";
  select.innerHTML = "";
  select.add(new Option(t("state.unit-order"), "unit"));
  for (const key of Object.keys(data.ranking.scores)) {
    select.add(new Option(key === "variance" ? t("state.variance") : t(`feature.${key}`), key));
  }
  select.value = [...select.options].some((o) => o.value === keep) ? keep : "variance";
}

async function read() {
  showError("state-error", null);
  $("states").disabled = true;
  try {
    data = await api("/api/states", { run: shared.run, text: $("state-text").value });
    const select = $("state-layer");
    select.innerHTML = "";
    for (let l = 0; l < data.layers; l++) select.add(new Option(String(l), String(l)));
    fillSorts();
    showRankings();
    const [l, u] = data.ranking.variance[0];
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

export function relabelState() {
  if (!data) return;
  fillSorts();
  showRankings();
  draw();
  colourText();
}

function cellAt(canvas, e) {
  const g = geometry[canvas.id];
  if (!g) return null;
  const box = canvas.getBoundingClientRect();
  const x = (e.clientX - box.left) * (canvas.width / box.width) - g.left;
  const y = (e.clientY - box.top) * (canvas.height / box.height) - g.top;
  const col = Math.floor(x / g.cellW), row = Math.floor(y / g.cellH);
  if (col < 0 || col >= g.n || row < 0 || row >= g.rows.length) return null;
  return { col, unit: g.rows[row], value: g.values[col][g.rows[row]], g };
}

function hover(e) {
  const at = cellAt(e.target, e);
  if (!at) { showTip(null); return; }
  const text = JSON.stringify(data.tokens[at.col]);
  showTip(`<div class="head">${escapeHtml(t("state.cell", {
    l: layer(), u: at.unit, i: at.col, tok: text, v: fmt(at.value, 3) }))}${
    data.unknown[at.col] ? `; ${escapeHtml(t("tip.unknown"))}` : ""} (${at.g.isCell ? "c" : "h"})</div>`,
    e.clientX, e.clientY);
}

export function initState() {
  $("act-legend").style.background = gradientCss((x) => divergingColour(2 * x - 1));
  $("states").addEventListener("click", read);
  for (const id of ["state-layer", "state-sort", "state-scale", "state-zoom"]) {
    $(id).addEventListener("change", () => { if (data) { draw(); colourText(); } });
  }
  $("state-threshold").addEventListener("input", () => {
    $("threshold-shown").textContent = $("state-threshold").value;
    if (data) { draw(); colourText(); }
  });
  for (const canvas of [$("heatmap"), $("cellmap")]) {
    canvas.addEventListener("mousemove", (e) => { if (data) hover(e); });
    canvas.addEventListener("mouseleave", () => showTip(null));
    canvas.addEventListener("click", (e) => {
      const at = data && cellAt(canvas, e);
      if (at) selectUnit(layer(), at.unit);
      if (at) hover(e);
    });
  }
  $("rankings").addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (li) selectUnit(Number(li.dataset.layer), Number(li.dataset.unit));
  });
}
