// Small line charts on a <canvas>: axes, ticks, a legend, optional log-scaled y, vertical
// markers and horizontal reference lines (a baseline's level).

const PALETTE = ["#2f6db5", "#d9822b", "#3a9b5c", "#b3261e", "#7b4fb0", "#555"];
const PAD = { left: 62, right: 14, top: 28, bottom: 40 };
export const CANVAS_FONT = 'system-ui, "Noto Sans CJK SC", "Source Han Sans SC", ' +
  '"PingFang SC", "Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif';

function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const mult = [1, 2, 5, 10].find((m) => m * step >= raw) * step;
  const ticks = [];
  for (let v = Math.ceil(lo / mult) * mult; v <= hi + 1e-9 * mult; v += mult) ticks.push(v);
  return ticks;
}

// The range of a log axis (in log10 units) around the data's [lo, hi]: whole decades when the
// data spans most of one or more (so that each decade gets its labelled tick), else the data
// with a margin.
export function logRange(lo, hi) {
  if (hi - lo >= 0.6) return [Math.floor(lo + 1e-9), Math.ceil(hi - 1e-9)];
  const pad = Math.max(0.05, (hi - lo) * 0.15);
  return [lo - pad, hi + pad];
}

// Ticks of a log axis over 10^lo .. 10^hi drawn over `pixels`: [{v, major, labelled}].
// Each power of ten is a labelled major tick (every second, fifth... one where a decade is
// too short for a label), 2..9 × 10^e are minor ticks where a decade is tall enough to show
// them; where fewer than two powers of ten fall inside (a narrow range), the minor ticks at
// 2 and 5 (or all of them) are labelled too.
export function logTicks(lo, hi, pixels = 300) {
  const ticks = [];
  const perDecade = pixels / Math.max(hi - lo, 1e-9);
  const every = [1, 2, 5, 10, 20, 50].find((k) => k * perDecade >= 16) || 100;
  for (let e = Math.floor(lo) - 1; e <= Math.ceil(hi); e++) {
    for (let m = 1; m <= 9; m++) {
      if (m > 1 && perDecade < 24) break;  // no room for minor ticks
      const v = m * 10 ** e;
      const at = Math.log10(v);
      const labelled = m === 1 && ((e % every) + every) % every === 0;
      if (at >= lo - 1e-9 && at <= hi + 1e-9) ticks.push({ v, major: m === 1, labelled });
    }
  }
  if (ticks.filter((k) => k.major).length < 2) {
    const span = hi - lo;
    for (const k of ticks) {
      const m = Math.round(k.v / 10 ** Math.floor(Math.log10(k.v) + 1e-9));
      k.labelled = k.major || span < 0.35 || m === 2 || m === 5;
    }
  }
  return ticks;
}

export function tickLabel(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e9 || a < 1e-2) return Number(v.toPrecision(2)).toExponential();
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return Number(v.toPrecision(3)).toLocaleString("en");
}

function yAxis(ctx, options, y0, y1, sy, W, H) {
  const drawn = [];
  const ticks = options.logY ? logTicks(y0, y1, H - PAD.top - PAD.bottom)
    : niceTicks(y0, y1).map((v) => ({ v, major: true, labelled: true }));
  ctx.textAlign = "right";
  for (const { v, major, labelled } of ticks) {
    const y = sy(v);
    if (y < PAD.top - 1 || y > H - PAD.bottom + 1) continue;
    ctx.strokeStyle = major ? "#c9d1d9" : "#eef1f4";
    ctx.beginPath(); ctx.moveTo(PAD.left - (major ? 6 : 3), y); ctx.lineTo(W - PAD.right, y);
    ctx.stroke();
    if (labelled) {
      ctx.fillText(tickLabel(v), PAD.left - 8, y + 4);
      drawn.push(tickLabel(v));
    }
  }
  return drawn;
}

// series: [{name, points: [[x, y], ...], dashed?, colour?}]; options: {title, xLabel, yLabel,
// logY, markers: [{x, label}], levels: [{y, label, colour?}]}. Points with a non-positive y
// are dropped on a log scale. The canvas keeps the labels of its y ticks in data-y-ticks.
export function lineChart(canvas, series, options = {}) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, W, H);
  const ok = ([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!options.logY || y > 0);
  const clean = series.map((s) => ({ ...s, points: s.points.filter(ok) }));
  const levels = (options.levels || []).filter((l) => ok([0, l.y]));
  const all = clean.flatMap((s) => s.points);
  ctx.fillStyle = "#1d232b";
  ctx.font = `600 13px ${CANVAS_FONT}`;
  ctx.textAlign = "left";
  ctx.fillText(options.title || "", PAD.left, 17);
  canvas.dataset.yTicks = "[]";
  if (!all.length) {
    ctx.font = `13px ${CANVAS_FONT}`;
    ctx.fillText(options.empty || "no data yet", W / 2 - 35, H / 2);
    return;
  }
  const fy = options.logY ? Math.log10 : (y) => y;
  const ys = [...all.map((p) => fy(p[1])), ...levels.map((l) => fy(l.y))];
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (options.logY) [y0, y1] = logRange(y0, y1);
  else if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => PAD.left + (x - x0) / (x1 - x0) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - (fy(y) - y0) / (y1 - y0) * (H - PAD.top - PAD.bottom);
  ctx.fillStyle = "#5d6874";
  ctx.font = `11px ${CANVAS_FONT}`;
  ctx.lineWidth = 1;
  canvas.dataset.yTicks = JSON.stringify(yAxis(ctx, options, y0, y1, sy, W, H));
  ctx.textAlign = "center";
  ctx.strokeStyle = "#e3e8ed";
  for (const v of niceTicks(x0, x1, Math.max(2, Math.floor(W / 110)))) {
    const x = sx(v);
    ctx.beginPath(); ctx.moveTo(x, PAD.top); ctx.lineTo(x, H - PAD.bottom); ctx.stroke();
    ctx.fillText(tickLabel(v), x, H - PAD.bottom + 15);
  }
  ctx.fillText(options.xLabel || "", (PAD.left + W - PAD.right) / 2, H - 6);
  ctx.save();
  ctx.translate(12, (PAD.top + H - PAD.bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(options.yLabel || "", 0, 0);
  ctx.restore();
  drawGuides(ctx, options.markers || [], levels, sx, sy, W, H);
  drawSeries(ctx, clean, sx, sy, W);
}

function drawGuides(ctx, markers, levels, sx, sy, W, H) {
  ctx.setLineDash([4, 3]);
  for (const m of markers) {
    const x = Math.max(PAD.left, Math.min(W - PAD.right, sx(m.x)));
    ctx.strokeStyle = ctx.fillStyle = "#b3261e";
    ctx.beginPath(); ctx.moveTo(x, PAD.top); ctx.lineTo(x, H - PAD.bottom); ctx.stroke();
    ctx.textAlign = x > W / 2 ? "right" : "left";
    ctx.fillText(m.label, x + (x > W / 2 ? -3 : 3), PAD.top + 10);
  }
  for (const level of levels) {
    const y = sy(level.y);
    ctx.strokeStyle = ctx.fillStyle = level.colour || "#6b7480";
    ctx.beginPath(); ctx.moveTo(PAD.left, y); ctx.lineTo(W - PAD.right, y); ctx.stroke();
    ctx.textAlign = "left";
    ctx.fillText(level.label, PAD.left + 4, y - 3);
  }
  ctx.setLineDash([]);
}

function drawSeries(ctx, clean, sx, sy, W) {
  clean.forEach((s, i) => {
    const colour = s.colour || PALETTE[i % PALETTE.length];
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 2;
    ctx.setLineDash(s.dashed ? [6, 4] : []);
    ctx.beginPath();
    s.points.forEach(([x, y], j) => (j ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
    ctx.stroke();
    if (s.points.length < 40) {
      for (const [x, y] of s.points) { ctx.beginPath(); ctx.arc(sx(x), sy(y), 2.5, 0, 7); ctx.fill(); }
    }
    ctx.setLineDash([]);
    ctx.textAlign = "right";
    ctx.fillText(s.name, W - PAD.right - 4, PAD.top + 14 + 14 * i);
  });
  ctx.lineWidth = 1;
}
