// One stream's panel: its head (name, JPEG quality, state badge, focus button), the canvas the overlay
// is composed on (with a placeholder saying why there is no picture) and its telemetry section.
// A panel is made for the first frame or status of a stream and kept for the page's life.
import { make } from "./dom.js";
import { addToGrid, toggleFocus } from "./layout.js";
import { buildTelemetry } from "./telemetry.js";

export const panels = new Map(); // stream id -> panel state

export function panelFor(streamId) {
  return panels.get(streamId) || createPanel(streamId);
}

function createPanel(streamId) {
  const el = make("article", "panel");
  el.dataset.stream = streamId;
  el.dataset.frames = "0";

  const head = make("div", "panel-head");
  const name = make("span", "stream-name", { textContent: streamId });
  const quality = make("span", "quality", {
    title: "JPEG quality the server sends this page (lower, then a half-width picture, when the link cannot keep up)",
  });
  const badge = make("span", "badge", { textContent: "live" });
  const focusButton = make("button", "focus-button", { type: "button", textContent: "focus" });
  focusButton.setAttribute("aria-pressed", "false");
  focusButton.addEventListener("click", () => toggleFocus(streamId));
  head.append(name, quality, badge, focusButton);

  const view = make("div", "view");
  // width x height: a placeholder 16:9 until the first frame sets the real size
  const canvas = make("canvas", "", { width: 16, height: 9, title: "click: focus on this stream / back to the grid" });
  canvas.addEventListener("click", () => toggleFocus(streamId));
  // Shown over the canvas while the stream is not live: why there is no picture.
  const placeholder = make("p", "placeholder", { hidden: true });
  view.append(canvas, placeholder);

  const { el: telemetry, fields, stages, drops, iou } = buildTelemetry();
  el.append(head, view, telemetry);

  const panel = {
    el, canvas, fields, badge, quality, placeholder, stages, drops, iou, state: "live",
    ctx: canvas.getContext("2d", { alpha: false, willReadFrequently: true }),
    next: null, busy: false, frame: null, drawn: 0, skipped: 0, receivedAt: performance.now(),
    history: [], // per drawn frame: IoU per class (or null), newest last
  };
  panels.set(streamId, panel);
  addToGrid(el);
  return panel;
}
