// roadseg live viewer: connects to /ws, draws the newest frame of each stream with its overlay.
//
// The server sends each frame's camera JPEG, its category ids and its telemetry in one message
// (protocol.js). The page blends the overlay itself (overlay.js), and shows the frame's telemetry
// from the same message in the same animation frame: pixels and numbers in step. Like the server,
// the page is latest-only: while a frame is being decoded, newer ones replace the waiting one, so a
// slow tab shows fresh frames, not a backlog. Every second it also polls the streams' health and the
// run's telemetry.
//
// Modules: connection.js (WebSocket, reconnects), protocol.js, decode.js, overlay.js (composition,
// opacity, class toggles), layout.js (grid, focus), panel.js, telemetry.js and iou.js (the panel's
// numbers), health.js (stream state), auth.js (the token); bev.js adds bird's-eye grids on its own.
import { authHeaders } from "./auth.js";
import { connect } from "./connection.js";
import { decode } from "./decode.js";
import { markStale, showHealth } from "./health.js";
import { applyHello, compose, initOverlay } from "./overlay.js";
import { panelFor, panels } from "./panel.js";
import { parseFrame, parseHello } from "./protocol.js";
import { showRunStats, updateTelemetry } from "./telemetry.js";

const TICK_MS = 1000;
const STATUS_URL = "/api/streams"; // per-stream state, reconnects, drops by cause (polled every tick)
const TELEMETRY_URL = "/api/telemetry"; // per-stream stage latency percentiles, IoU so far (every tick)

function onText(text) {
  const hello = parseHello(text);
  if (!hello) return;
  applyHello(hello);
  redrawAll();
}

function onFrame(buffer) {
  const frame = parseFrame(buffer);
  if (!frame) return;
  const panel = panelFor(String(frame.meta.stream));
  if (panel.next) panel.skipped += 1; // never decoded: a newer frame beat it
  panel.next = frame;
  panel.receivedAt = performance.now();
  if (!panel.busy) drawLoop(panel);
}

async function drawLoop(panel) {
  // One decode in flight per stream; each pass takes whatever is newest now.
  panel.busy = true;
  try {
    while (panel.next) {
      const { meta, jpeg, mask } = panel.next;
      panel.next = null;
      const frame = await decode(meta, jpeg, mask);
      if (!frame) continue;
      await nextAnimationFrame(); // draw at most once per display refresh
      if (panel.frame) panel.frame.bitmap.close(); // frees decoded pixels now instead of at GC time
      panel.frame = frame;
      // The picture and its telemetry change together, in this one task: always in step.
      compose(panel);
      updateTelemetry(panel, meta);
    }
  } finally {
    panel.busy = false;
  }
}

function nextAnimationFrame() {
  return new Promise((resolve) => requestAnimationFrame(resolve));
}

function redrawAll() {
  for (const panel of panels.values()) compose(panel);
}

async function getJson(url) {
  try {
    const response = await fetch(url, { cache: "no-store", headers: authHeaders });
    return response.ok ? await response.json() : null;
  } catch (err) {
    return null; // the WebSocket status already says the server is gone
  }
}

async function pollStreams() {
  const streams = await getJson(STATUS_URL);
  if (!streams) return;
  for (const [streamId, status] of Object.entries(streams)) showHealth(panelFor(streamId), status);
}

async function pollTelemetry() {
  const body = await getJson(TELEMETRY_URL);
  if (!body || !body.streams) return;
  for (const [streamId, stats] of Object.entries(body.streams)) {
    const panel = panels.get(streamId);
    if (panel) showRunStats(panel, stats);
  }
}

setInterval(() => {
  const now = performance.now();
  for (const panel of panels.values()) markStale(panel, now);
  pollStreams();
  pollTelemetry();
}, TICK_MS);

initOverlay(redrawAll);
connect(onText, onFrame);
