// Shared pieces of the playground page: API calls, colours, token spans, the tooltip.
import { t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

// The state every tab reads: the selected run, its card, the last text generated or scored.
export const shared = { run: null, runs: [], card: null, lastText: "" };

export class ApiError extends Error {}

// POST (when body is given) or GET a JSON endpoint; a non-2xx answer throws its message.
export async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(t("err.server", { m: err.message }));
  }
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new ApiError(data.error || `HTTP ${response.status}`);
  return data;
}

// Read an NDJSON stream, calling onLine for each parsed object; returns when it ends.
export async function readLines(response, onLine, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    if (signal && signal.aborted) { await reader.cancel(); return; }
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 1);
      if (line.trim()) onLine(JSON.parse(line));
    }
  }
  if (buffer.trim()) onLine(JSON.parse(buffer));
}

export function showError(id, err) {
  $(id).textContent = err ? (err.message || String(err)) : "";
}

// Colours. The probability scale runs orange (unlikely) .. pale .. purple (likely), the
// ColorBrewer PuOr pair that reads the same to red-green colour-blind eyes; pale enough to
// read text on.
function mix(a, b, f) {
  return a.map((x, i) => Math.round(x + (b[i] - x) * f));
}

function ramp(stops, x) {
  const f = Math.max(0, Math.min(1, x)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(f));
  const [r, g, b] = mix(stops[i], stops[i + 1], f - i);
  return `rgb(${r}, ${g}, ${b})`;
}

const PU_OR = [[253, 184, 99], [254, 224, 182], [247, 247, 247], [216, 218, 235],
               [178, 171, 210]];

export function probColour(p) {
  return ramp(PU_OR, p);
}

// Surprisal in bits -> white (0) .. deep orange (max).
export function heatColour(bits, max) {
  const t = Math.max(0, Math.min(1, bits / max));
  return `hsl(${30 - 25 * t}, 90%, ${97 - 45 * t}%)`;
}

// Signed value in [-1, 1] -> blue .. white .. red (ColorBrewer RdBu: colour-blind safe).
export const RD_BU = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130],
                      [178, 24, 43]];

export function divergingColour(v) {
  return ramp(RD_BU, (Math.max(-1, Math.min(1, v)) + 1) / 2);
}

export function divergingRgb(v) {
  const f = ((Math.max(-1, Math.min(1, v)) + 1) / 2) * (RD_BU.length - 1);
  const i = Math.min(RD_BU.length - 2, Math.floor(f));
  return mix(RD_BU[i], RD_BU[i + 1], f - i);
}

export function gradientCss(fn, steps = 10) {
  const stops = [];
  for (let i = 0; i <= steps; i++) stops.push(fn(i / steps));
  return `linear-gradient(90deg, ${stops.join(", ")})`;
}

// What a token looks like on the page: whitespace made visible only where it would vanish.
export function shown(text) {
  return text === "\n" ? "↵\n" : text;
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0)) return x.toExponential(2);
  return x.toFixed(digits);
}

// A span for one token; info(el) gives the tooltip's HTML when hovered or tapped. Tokens
// outside the vocabulary carry the dashed outline (class "unk") in every view.
export function tokenSpan(text, colour, info, { classes = [], unknown = false } = {}) {
  const span = document.createElement("span");
  span.className = ["tok", ...classes, ...(unknown ? ["unk"] : [])].join(" ");
  span.textContent = shown(text);
  span.style.background = colour;
  span.tooltip = info;
  return span;
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

// The top alternatives of one step as a small table.
export function topTable(top, chosen) {
  const rows = top.map(([text, p]) => {
    const mark = text === chosen ? " ◀" : "";
    const label = escapeHtml(JSON.stringify(text));
    return `<tr><td>${label}${mark}</td><td class="p">${(100 * p).toFixed(1)}%</td>` +
      `<td><span class="bar" style="width:${Math.round(60 * p)}px"></span></td></tr>`;
  });
  return `<table>${rows.join("")}</table>`;
}

export function stepInfo(step, extra = "") {
  const name = escapeHtml(JSON.stringify(step.text));
  const unknown = step.unknown ? `; ${t("tip.unknown")}` : "";
  const head = step.prob === null || step.prob === undefined
    ? `<div class="head">${name}: ${t("tip.first")}${unknown}</div>`
    : `<div class="head">${name}: p = ${(100 * step.prob).toFixed(2)}%` +
      (step.entropy === null || step.entropy === undefined ? ""
        : `, ${t("tip.entropy", { h: fmt(step.entropy, 2) })}`) + `${extra}${unknown}</div>`;
  return head + (step.top && step.top.length ? topTable(step.top, step.text) : "");
}

// One tooltip for the whole page: hover and taps on any .tok carrying one, and showTip for
// the canvases (the heatmap's cells).
export function showTip(html, x, y) {
  const tip = $("tooltip");
  if (!html) { tip.style.display = "none"; return; }
  tip.innerHTML = html;
  tip.style.display = "block";
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = `${Math.max(4, Math.min(x + 14, window.innerWidth - w - 8))}px`;
  tip.style.top = `${y + h + 24 > window.innerHeight ? Math.max(4, y - h - 10) : y + 18}px`;
}

export function installTooltip() {
  const fromToken = (e) => {
    const el = e.target.closest(".tok");
    if (el && el.tooltip) showTip(el.tooltip(), e.clientX, e.clientY);
    else if (!e.target.closest("canvas")) showTip(null);
  };
  document.addEventListener("mouseover", fromToken);
  document.addEventListener("mousemove", (e) => {
    if ($("tooltip").style.display === "block") fromToken(e);
  });
  document.addEventListener("click", (e) => { if (e.target.closest(".tok")) fromToken(e); });
}

// Fill a <select> with the served runs.
export function fillRuns(select, runs, withNone = false) {
  select.innerHTML = withNone ? `<option value="" data-i18n="none">${t("none")}</option>` : "";
  for (const run of runs) {
    const option = document.createElement("option");
    option.value = run.name;
    option.textContent = run.name;
    select.appendChild(option);
  }
}
