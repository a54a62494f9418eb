// IoU per class with ground truth, in a panel's telemetry section: this frame's value, the run's so far,
// and a sparkline of the last HISTORY frames. Rows appear for the classes the stream has measured.
import { make } from "./dom.js";
import { isNum } from "./numbers.js";
import { classes } from "./overlay.js";

const HISTORY = 60; // IoU sparkline: this many frames

export function buildIou() {
  const el = make("div", "iou", { hidden: true });
  return { el, rows: new Map() };
}

// The frame just drawn: its IoU per class (meta.iou, indexed by class id; absent without ground truth).
export function updateIou(panel, meta) {
  const values = Array.isArray(meta.iou) ? meta.iou : null;
  panel.history.push(values);
  if (panel.history.length > HISTORY) panel.history.shift();
  panel.iou.el.hidden = !values && !panel.history.some(Boolean);
  if (panel.iou.el.hidden) return;
  for (const cls of classes) {
    const value = values ? values[cls.id] : null;
    const seen = panel.history.some((v) => v && isNum(v[cls.id]));
    if (!seen && !panel.iou.rows.has(cls.id)) continue;
    const row = iouRow(panel, cls);
    row.now.textContent = isNum(value) ? value.toFixed(3) : "–";
    drawSparkline(row, panel.history.map((v) => (v && isNum(v[cls.id]) ? v[cls.id] : null)), cls.color);
  }
}

// The run's IoU so far (/api/telemetry, by class name) on the rows shown.
export function showRunIou(panel, perClass) {
  for (const cls of classes) {
    const row = panel.iou.rows.get(cls.id);
    const value = perClass[cls.name];
    if (row) row.run.textContent = isNum(value) ? `run ${value.toFixed(3)}` : "";
  }
}

function iouRow(panel, cls) {
  let row = panel.iou.rows.get(cls.id);
  if (row) return row;
  const el = make("div", "iou-row");
  el.dataset.classId = String(cls.id);
  const swatch = make("span", "swatch");
  const [r, g, b] = cls.color;
  swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
  const name = make("span", "iou-name", { textContent: cls.name });
  const now = make("span", "iou-now");
  const run = make("span", "iou-run", { title: "IoU over the whole run so far" });
  const spark = make("canvas", "spark", { width: 96, height: 18 });
  el.append(swatch, name, now, run, spark);
  // Classes in id order, whatever order they first appear in.
  const after = [...panel.iou.rows.entries()].filter(([id]) => id > cls.id).sort((x, y) => x[0] - y[0])[0];
  panel.iou.el.insertBefore(el, after ? after[1].el : null);
  row = { el, now, run, spark, ctx: spark.getContext("2d") };
  panel.iou.rows.set(cls.id, row);
  return row;
}

function drawSparkline(row, values, color) {
  const { ctx, spark } = row;
  const w = spark.width;
  const h = spark.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "rgba(255, 255, 255, 0.15)";
  ctx.beginPath();
  ctx.moveTo(0, h - 0.5);
  ctx.lineTo(w, h - 0.5);
  ctx.stroke();
  ctx.strokeStyle = color[0] + color[1] + color[2] < 90 ? "#c9d1d9" : `rgb(${color.join(", ")})`;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  values.forEach((value, i) => {
    if (value === null) {
      drawing = false;
      return;
    }
    const x = values.length > 1 ? (i * (w - 2)) / (HISTORY - 1) + 1 : w / 2;
    const y = h - 1 - value * (h - 2);
    if (drawing) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    drawing = true;
  });
  ctx.stroke();
}
