// Shared pieces of the playground page: API calls, colours, token spans, the tooltip.

export const $ = (id) => document.getElementById(id);

// The state every tab reads: the selected run and the last text generated or scored.
export const shared = { run: null, runs: [], lastText: "" };

export class ApiError extends Error {}

// POST (when body is given) or GET a JSON endpoint; a non-2xx answer throws its message.
export async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(`the server did not answer (${err.message}); is seqlm serve still running?`);
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

// Probability 0..1 -> red (unlikely) .. yellow .. green (likely), pale enough to read on.
export function probColour(p) {
  const hue = 120 * Math.max(0, Math.min(1, p));
  return `hsl(${hue}, 75%, 80%)`;
}

// Surprisal in bits -> white (0) .. deep orange (max).
export function heatColour(bits, max) {
  const t = Math.max(0, Math.min(1, bits / max));
  return `hsl(${30 - 25 * t}, 90%, ${97 - 45 * t}%)`;
}

// Signed value in [-1, 1] -> blue .. white .. red.
export function divergingColour(v) {
  const t = Math.max(-1, Math.min(1, v));
  const light = 97 - 50 * Math.abs(t);
  return t >= 0 ? `hsl(0, 80%, ${light}%)` : `hsl(215, 80%, ${light}%)`;
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

// A span for one token; info(el) gives the tooltip's HTML when hovered or tapped.
export function tokenSpan(text, colour, info, classes = []) {
  const span = document.createElement("span");
  span.className = ["tok", ...classes].join(" ");
  span.textContent = shown(text);
  span.style.background = colour;
  span.tooltip = info;
  return span;
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
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
  const head = step.prob === null || step.prob === undefined
    ? `<div class="head">${escapeHtml(JSON.stringify(step.text))}: nothing predicts the first token</div>`
    : `<div class="head">${escapeHtml(JSON.stringify(step.text))}: p = ${(100 * step.prob).toFixed(2)}%` +
      (step.entropy === null || step.entropy === undefined ? ""
        : `, entropy ${fmt(step.entropy, 2)} bits`) + `${extra}</div>`;
  return head + (step.top && step.top.length ? topTable(step.top, step.text) : "");
}

// One tooltip for the whole page, following hover and taps on any .tok carrying one.
export function installTooltip() {
  const tip = $("tooltip");
  const show = (el, x, y) => {
    if (!el || !el.tooltip) { tip.style.display = "none"; return; }
    tip.innerHTML = el.tooltip();
    tip.style.display = "block";
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = `${Math.min(x + 14, window.innerWidth - w - 8)}px`;
    tip.style.top = `${y + h + 24 > window.innerHeight ? y - h - 10 : y + 18}px`;
  };
  document.addEventListener("mouseover", (e) => {
    const el = e.target.closest(".tok");
    show(el, e.clientX, e.clientY);
  });
  document.addEventListener("mousemove", (e) => {
    if (tip.style.display === "block") show(e.target.closest(".tok"), e.clientX, e.clientY);
  });
  document.addEventListener("click", (e) => {
    const el = e.target.closest(".tok");
    if (el) show(el, e.clientX, e.clientY);
  });
}

// Fill a <select> with the served runs.
export function fillRuns(select, runs, withNone = false) {
  select.innerHTML = withNone ? '<option value="">(none)</option>' : "";
  for (const run of runs) {
    const option = document.createElement("option");
    option.value = run.name;
    option.textContent = run.name;
    select.appendChild(option);
  }
}
