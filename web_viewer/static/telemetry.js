// A panel's telemetry section: the frame's numbers (seq, latency, fps, ...), one bar per pipeline stage
// and the IoU rows (iou.js). Per drawn frame from its header, in the task that draws its pixels;
// the run's percentiles from /api/telemetry (polled).
import { make } from "./dom.js";
import { buildIou, showRunIou, updateIou } from "./iou.js";
import { isNum } from "./numbers.js";

const STAGES = [["queue", "queue"], ["preprocess", "pre"], ["inference", "model"], ["postprocess", "post"]];
const OTHER_STAGE = "other"; // latency not in the four stages: IoU, mask compression, publish, waits
const METRICS = [["seq", "seq"], ["latency", "latency"], ["fps", "fps"], ["miou", "mIoU"], ["size", "size"],
                 ["valid", "valid"], ["state", "state"], ["reconnects", "reconnects"], ["lost", "dropped"],
                 ["skipped", "skipped"]];

// {el, fields, stages, drops, iou}: the section, and what the updates below write to.
export function buildTelemetry() {
  const el = make("section", "telemetry");
  const metrics = make("dl", "metrics");
  const fields = {};
  for (const [key, label] of METRICS) fields[key] = addMetric(metrics, label);
  fields.skipped.dd.title = "frames this page received but never drew (a newer one came first)";
  fields.miou.row.hidden = true;
  const stages = buildStages();
  const drops = make("p", "drops");
  const iou = buildIou();
  el.append(metrics, stages.el, drops, iou.el);
  return { el, fields, stages, drops, iou };
}

function addMetric(list, label) {
  const row = make("div", `metric metric-${label.toLowerCase()}`);
  const dt = make("dt", "", { textContent: label });
  const dd = make("dd", "", { textContent: "–" });
  row.append(dt, dd);
  list.append(row);
  return { row, dd };
}

// One row per stage: a bar (share of this frame's latency), this frame's ms, and p50/p99 so far.
function buildStages() {
  const el = make("div", "stages");
  const rows = {};
  for (const [key, label] of [...STAGES, [OTHER_STAGE, "other"]]) {
    const row = make("div", "stage");
    row.dataset.stage = key;
    const name = make("span", "stage-name", { textContent: label });
    const bar = make("span", "stage-bar");
    const fill = make("span", `stage-fill stage-${key}`);
    bar.append(fill);
    const ms = make("span", "stage-ms", { textContent: "–" });
    const pct = make("span", "stage-pct", { title: "p50 / p99 over the stream's recent frames" });
    row.append(name, bar, ms, pct);
    el.append(row);
    rows[key] = { row, fill, ms, pct };
  }
  return { el, rows };
}

// The frame just drawn: its header's numbers.
export function updateTelemetry(panel, meta) {
  const f = panel.fields;
  panel.drawn += 1;
  panel.el.dataset.frames = String(panel.drawn);
  panel.el.dataset.seq = String(meta.seq);
  f.seq.dd.textContent = String(meta.seq);
  f.latency.dd.textContent = isNum(meta.latency_ms) ? `${meta.latency_ms.toFixed(1)} ms` : "–";
  f.fps.dd.textContent = isNum(meta.fps) ? meta.fps.toFixed(1) : "–";
  f.miou.row.hidden = !isNum(meta.miou);
  if (isNum(meta.miou)) f.miou.dd.textContent = meta.miou.toFixed(3);
  f.size.dd.textContent = `${meta.width}×${meta.height}`;
  if (typeof meta.valid === "boolean") {
    f.valid.dd.textContent = meta.valid ? "yes" : `no (${meta.invalid_reason || "?"})`;
    f.valid.row.classList.toggle("bad", !meta.valid);
  }
  if (meta.state) f.state.dd.textContent = meta.state;
  if (isNum(meta.reconnects)) f.reconnects.dd.textContent = String(meta.reconnects);
  f.skipped.dd.textContent = String(panel.skipped);
  panel.quality.textContent = isNum(meta.quality) ? `q${meta.quality}` : "";
  updateStages(panel, meta);
  updateIou(panel, meta);
}

function updateStages(panel, meta) {
  const stages = meta.stages_ms || {};
  const total = isNum(meta.latency_ms) ? meta.latency_ms : 0;
  let sum = 0;
  for (const [key] of STAGES) {
    const ms = stages[key];
    if (isNum(ms)) sum += ms;
    setStage(panel.stages.rows[key], isNum(ms) ? ms : null, total);
  }
  setStage(panel.stages.rows[OTHER_STAGE], isNum(meta.latency_ms) ? Math.max(0, total - sum) : null, total);
}

function setStage(row, ms, total) {
  row.ms.textContent = ms === null ? "–" : `${ms.toFixed(1)} ms`;
  row.fill.style.width = `${ms !== null && total > 0 ? Math.min(100, (100 * ms) / total) : 0}%`;
}

// The stream's entry in /api/telemetry: stage and end-to-end latency percentiles, IoU so far.
export function showRunStats(panel, stats) {
  const latency = stats.latency_ms || {};
  for (const [key] of STAGES) {
    const p = latency[key];
    panel.stages.rows[key].pct.textContent = p && isNum(p.p50) ? `${p.p50.toFixed(1)} / ${p.p99.toFixed(1)}` : "";
  }
  const e2e = latency.end_to_end;
  panel.stages.rows[OTHER_STAGE].pct.textContent = "";
  panel.fields.latency.dd.title = e2e && isNum(e2e.p50)
    ? `capture → publish, p50 ${e2e.p50.toFixed(1)} ms, p99 ${e2e.p99.toFixed(1)} ms` : "";
  const perClass = stats.iou && stats.iou.per_class;
  if (perClass) showRunIou(panel, perClass);
}
