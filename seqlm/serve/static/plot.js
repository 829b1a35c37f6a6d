// Small line charts on a <canvas>: axes, ticks, a legend, optional log-scaled y and markers.

const PALETTE = ["#2f6db5", "#d9822b", "#3a9b5c", "#b3261e", "#7b4fb0", "#555"];
const PAD = { left: 58, right: 14, top: 28, bottom: 40 };

function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const mult = [1, 2, 5, 10].find((m) => m * step >= raw) * step;
  const ticks = [];
  for (let v = Math.ceil(lo / mult) * mult; v <= hi + 1e-9 * mult; v += mult) ticks.push(v);
  return ticks;
}

// Ticks for a log axis spanning 10^lo .. 10^hi: the powers of ten, or 1-2-5 steps when
// fewer than three powers fall inside (plain steps for a narrow range).
function logTicks(lo, hi) {
  const ticks = [];
  const multiples = hi - lo < 2 ? [1, 2, 5] : [1];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of multiples) {
      const v = m * 10 ** e;
      if (Math.log10(v) >= lo - 1e-9 && Math.log10(v) <= hi + 1e-9) ticks.push(v);
    }
  }
  return ticks.length >= 3 ? ticks : niceTicks(10 ** lo, 10 ** hi, 4);
}

function label(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e9 || a < 1e-2) return v.toExponential(0);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return Number(v.toPrecision(3)).toLocaleString("en");
}

// series: [{name, points: [[x, y], ...], dashed?}]; options: {title, xLabel, yLabel, logY,
// markers: [{x, label}]}. Points with a non-positive y are dropped on a log scale.
export function lineChart(canvas, series, options = {}) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, W, H);
  const ok = ([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!options.logY || y > 0);
  const clean = series.map((s) => ({ ...s, points: s.points.filter(ok) }));
  const all = clean.flatMap((s) => s.points);
  ctx.fillStyle = "#1d232b";
  ctx.font = "600 13px system-ui, sans-serif";
  ctx.fillText(options.title || "", PAD.left, 17);
  if (!all.length) {
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillText("no data yet", W / 2 - 35, H / 2);
    return;
  }
  const fy = options.logY ? Math.log10 : (y) => y;
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => fy(p[1]))), Math.max(...all.map((p) => fy(p[1])))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => PAD.left + (x - x0) / (x1 - x0) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - (fy(y) - y0) / (y1 - y0) * (H - PAD.top - PAD.bottom);
  ctx.strokeStyle = "#d7dde3";
  ctx.fillStyle = "#5d6874";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  const yTicks = options.logY ? logTicks(y0, y1) : niceTicks(y0, y1);
  ctx.textAlign = "right";
  for (const v of yTicks) {
    const y = sy(v);
    if (y < PAD.top - 1 || y > H - PAD.bottom + 1) continue;
    ctx.beginPath(); ctx.moveTo(PAD.left, y); ctx.lineTo(W - PAD.right, y); ctx.stroke();
    ctx.fillText(label(v), PAD.left - 5, y + 4);
  }
  ctx.textAlign = "left";
  for (const v of niceTicks(x0, x1, 6)) {
    const x = sx(v);
    ctx.beginPath(); ctx.moveTo(x, PAD.top); ctx.lineTo(x, H - PAD.bottom); ctx.stroke();
    ctx.fillText(label(v), x - 12, H - PAD.bottom + 15);
  }
  ctx.fillText(options.xLabel || "", W / 2 - 30, H - 6);
  ctx.save();
  ctx.translate(11, (PAD.top + H - PAD.bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText(options.yLabel || "", 0, 0);
  ctx.restore();
  for (const m of options.markers || []) {
    const x = Math.max(PAD.left, Math.min(W - PAD.right, sx(m.x)));
    ctx.strokeStyle = "#b3261e";
    ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(x, PAD.top); ctx.lineTo(x, H - PAD.bottom); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#b3261e";
    ctx.textAlign = x > W / 2 ? "right" : "left";
    ctx.fillText(m.label, x + (x > W / 2 ? -3 : 3), PAD.top + 10);
    ctx.textAlign = "left";
  }
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
    ctx.fillText(s.name, W - PAD.right - 150, PAD.top + 14 + 14 * i);
  });
}
