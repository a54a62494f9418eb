// The WebSocket to /ws, reopened with jittered exponential backoff whenever it closes; the status
// indicator in the top bar says which it is (connecting, live, disconnected and when it retries).
import { token } from "./auth.js";

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;

const statusEl = document.getElementById("status");
const statusTextEl = document.getElementById("status-text");
let backoffMs = RECONNECT_MIN_MS;

// onText(string) and onFrame(ArrayBuffer) get every message of every connection.
export function connect(onText, onFrame) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const ws = new WebSocket(`${scheme}//${location.host}/ws${query}`);
  ws.binaryType = "arraybuffer";
  setStatus("connecting", "connecting…");
  ws.onopen = () => {
    backoffMs = RECONNECT_MIN_MS;
    setStatus("live", "live");
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(event.data);
    else onFrame(event.data);
  };
  // "error" is always followed by "close", so reconnecting here covers both.
  ws.onclose = () => scheduleReconnect(onText, onFrame);
}

function scheduleReconnect(onText, onFrame) {
  // Jitter keeps many open tabs from reconnecting in lock-step after a restart.
  const delay = backoffMs * (0.8 + 0.4 * Math.random());
  backoffMs = Math.min(backoffMs * 2, RECONNECT_MAX_MS);
  setStatus("offline", `disconnected · retrying in ${(delay / 1000).toFixed(1)} s`);
  setTimeout(() => connect(onText, onFrame), delay);
}

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusTextEl.textContent = text;
}
