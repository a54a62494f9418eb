// A stream's health on its panel: the server's state (/api/streams: live, stalled, reconnecting, ...),
// reconnects and drops by cause, with the reason there is no picture; and the page's own guess,
// "stale", for a live stream whose frames stopped reaching this page.
import { isNum } from "./numbers.js";

const STALE_AFTER_MS = 3000; // a panel without frames for this long is dimmed

const REASONS = {
  connecting: () => "no frame from this camera yet; still trying",
  stalled: () => "frames stopped arriving; reopening the camera",
  reconnecting: () => "the camera was lost; reconnecting",
  failed: () => "the stream broke and was given up",
  ended: (s) => `the recording ended after ${s.frames_in ?? "?"} frames`,
};

export function showHealth(panel, status) {
  panel.state = status.state;
  panel.el.dataset.state = status.state;
  panel.fields.state.dd.textContent = status.state;
  panel.fields.reconnects.dd.textContent = String(status.reconnects);
  const dropped = Object.entries(status.dropped || {}).filter(([, n]) => n > 0);
  const lost = dropped.reduce((sum, [, n]) => sum + n, 0);
  panel.fields.lost.dd.textContent = String(lost);
  panel.fields.lost.dd.title = dropped.map(([k, v]) => `${k}: ${v}`).join(", ");
  panel.drops.textContent = dropped.length
    ? `dropped by cause: ${dropped.map(([k, v]) => `${k} ${v}`).join(" · ")}` : "";
  const down = status.state !== "live";
  if (down) panel.badge.textContent = status.state;
  panel.placeholder.hidden = !down;
  if (down) {
    const reason = (REASONS[status.state] || (() => ""))(status);
    const age = isNum(status.last_frame_age_ms) ? `, last frame ${(status.last_frame_age_ms / 1000).toFixed(1)} s ago` : "";
    panel.placeholder.textContent = `${status.state}: ${reason}${age} · ${status.reconnects} reconnects`;
  }
}

export function markStale(panel, now) {
  const stale = now - panel.receivedAt > STALE_AFTER_MS;
  panel.el.classList.toggle("stale", stale);
  // The server's state (stalled, reconnecting, ...) wins over the page's own guess.
  panel.badge.textContent = panel.state !== "live" ? panel.state : (stale ? "stale" : "live");
}
