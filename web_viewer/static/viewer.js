// roadseg live viewer: connects to /ws, draws the newest frame of each stream.
//
// Protocol (see web_viewer/hub.py): a text "hello" with the class table, then
// binary frames = uint32 BE header length N, N bytes of JSON header, JPEG bytes.
// Like the server, the page is latest-only: while a frame is being decoded,
// newer ones replace the waiting one, so a slow tab shows fresh frames, not a backlog.
"use strict";

(() => {
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const STALE_AFTER_MS = 3000; // a panel without frames for this long is dimmed
  const TICK_MS = 1000;
  const STATUS_URL = "/api/streams"; // per-stream state, reconnects, drops (polled every tick)
  const HEADER_LEN_BYTES = 4;

  const streamsEl = document.getElementById("streams");
  const emptyEl = document.getElementById("empty");
  const legendEl = document.getElementById("legend");
  const statusEl = document.getElementById("status");
  const statusTextEl = document.getElementById("status-text");
  const utf8 = new TextDecoder();
  const panels = new Map(); // stream id -> panel state
  let backoffMs = RECONNECT_MIN_MS;
  const token = takeToken();

  // The viewer token (README, "Viewer security"): the URL printed at start carries ?token=.
  // Kept for this tab only (sessionStorage), taken out of the address bar (no bookmark or
  // screen share shows it), and sent with every request: in the query of the WebSocket
  // (browsers cannot set its headers), as a Bearer header on API calls.
  function takeToken() {
    const url = new URL(location.href);
    const fromUrl = url.searchParams.get("token");
    let stored = null;
    try {
      if (fromUrl) sessionStorage.setItem("roadseg-token", fromUrl);
      stored = sessionStorage.getItem("roadseg-token");
    } catch (err) {
      // storage disabled: the URL's token still serves this page load (and the cookie the server set)
    }
    if (fromUrl) {
      url.searchParams.delete("token");
      history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    }
    return fromUrl || stored;
  }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusTextEl.textContent = text;
  }

  // ------------------------------------------------------------------ connection

  function connect() {
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
    ws.onclose = () => scheduleReconnect();
  }

  function scheduleReconnect() {
    // Jitter keeps many open tabs from reconnecting in lock-step after a restart.
    const delay = backoffMs * (0.8 + 0.4 * Math.random());
    backoffMs = Math.min(backoffMs * 2, RECONNECT_MAX_MS);
    setStatus("offline", `disconnected · retrying in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(connect, delay);
  }

  function onText(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      console.warn("viewer: bad text message", err);
      return;
    }
    if (message.type === "hello") renderLegend(message.classes || []);
  }

  function onFrame(buffer) {
    if (buffer.byteLength < HEADER_LEN_BYTES) return;
    const headerLen = new DataView(buffer).getUint32(0, false);
    const jpegStart = HEADER_LEN_BYTES + headerLen;
    if (jpegStart > buffer.byteLength) return;
    let meta;
    try {
      meta = JSON.parse(utf8.decode(new Uint8Array(buffer, HEADER_LEN_BYTES, headerLen)));
    } catch (err) {
      console.warn("viewer: bad frame header", err);
      return;
    }
    const panel = panels.get(meta.stream) || createPanel(String(meta.stream));
    if (panel.next) panel.dropped += 1; // never decoded: a newer frame beat it
    panel.next = { meta, jpeg: new Uint8Array(buffer, jpegStart) };
    panel.receivedAt = performance.now();
    if (!panel.busy) drawLoop(panel);
  }

  // ------------------------------------------------------------------ drawing

  async function drawLoop(panel) {
    // One decode in flight per stream; each pass takes whatever is newest now.
    panel.busy = true;
    try {
      while (panel.next) {
        const { meta, jpeg } = panel.next;
        panel.next = null;
        let bitmap;
        try {
          bitmap = await createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }));
        } catch (err) {
          console.warn(`viewer: cannot decode frame of ${meta.stream}`, err);
          continue;
        }
        await nextAnimationFrame(); // draw at most once per display refresh
        drawBitmap(panel, bitmap);
        bitmap.close(); // frees decoded pixels now instead of at GC time
        updateMetrics(panel, meta);
      }
    } finally {
      panel.busy = false;
    }
  }

  function nextAnimationFrame() {
    return new Promise((resolve) => requestAnimationFrame(resolve));
  }

  function drawBitmap(panel, bitmap) {
    const canvas = panel.canvas;
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    panel.ctx.drawImage(bitmap, 0, 0);
    panel.drawn += 1;
    panel.el.dataset.frames = String(panel.drawn);
  }

  // ------------------------------------------------------------------ panels

  function createPanel(streamId) {
    const el = document.createElement("article");
    el.className = "panel";
    el.dataset.stream = streamId;
    el.dataset.frames = "0";

    const head = document.createElement("div");
    head.className = "panel-head";
    const name = document.createElement("span");
    name.className = "stream-name";
    name.textContent = streamId;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "live";
    head.append(name, badge);

    const canvas = document.createElement("canvas");
    canvas.width = 16; // placeholder 16:9 until the first frame sets the real size
    canvas.height = 9;

    const metrics = document.createElement("dl");
    metrics.className = "metrics";
    const fields = {};
    for (const [key, label] of [["seq", "seq"], ["latency", "latency"], ["fps", "fps"],
                                ["miou", "mIoU"], ["size", "size"], ["dropped", "skipped"],
                                ["lost", "dropped"], ["reconnects", "reconnects"]]) {
      fields[key] = addMetric(metrics, label);
    }
    // Shown over the canvas while the stream is not live: why there is no picture.
    const placeholder = document.createElement("p");
    placeholder.className = "placeholder";
    placeholder.hidden = true;
    el.append(head, canvas, placeholder, metrics);
    insertSorted(el, streamId);
    emptyEl.hidden = true;

    const panel = {
      el, canvas, fields, badge, placeholder, state: "live",
      ctx: canvas.getContext("2d", { alpha: false }),
      next: null, busy: false, drawn: 0, dropped: 0, receivedAt: performance.now(),
    };
    panels.set(streamId, panel);
    return panel;
  }

  function addMetric(list, label) {
    const row = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = "–";
    row.append(dt, dd);
    list.append(row);
    return { row, dd };
  }

  function insertSorted(el, streamId) {
    // Stable, alphabetical order: panels do not jump around as streams appear.
    for (const other of streamsEl.children) {
      if (other.dataset.stream > streamId) {
        streamsEl.insertBefore(el, other);
        return;
      }
    }
    streamsEl.append(el);
  }

  function updateMetrics(panel, meta) {
    const f = panel.fields;
    panel.el.dataset.seq = String(meta.seq);
    f.seq.dd.textContent = String(meta.seq);
    f.latency.dd.textContent = isNum(meta.latency_ms) ? `${meta.latency_ms.toFixed(1)} ms` : "–";
    f.fps.dd.textContent = isNum(meta.fps) ? meta.fps.toFixed(1) : "–";
    f.miou.row.hidden = !isNum(meta.miou);
    if (isNum(meta.miou)) f.miou.dd.textContent = meta.miou.toFixed(3);
    f.size.dd.textContent = `${meta.width}×${meta.height}`;
    f.dropped.dd.textContent = String(panel.dropped);
  }

  function isNum(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  // ------------------------------------------------------------------ legend

  function renderLegend(classes) {
    legendEl.replaceChildren();
    for (const cls of classes) {
      const item = document.createElement("li");
      item.className = "legend-item";
      item.dataset.classId = String(cls.id);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      const [r, g, b] = cls.color;
      swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
      const label = document.createElement("span");
      label.textContent = cls.name;
      item.append(swatch, label);
      legendEl.append(item);
    }
  }

  // ------------------------------------------------------------------ stream health

  async function pollStreams() {
    let streams;
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const response = await fetch(STATUS_URL, { cache: "no-store", headers });
      if (!response.ok) return;
      streams = await response.json();
    } catch (err) {
      return; // the WebSocket status already says the server is gone
    }
    for (const [streamId, status] of Object.entries(streams)) {
      const panel = panels.get(streamId) || createPanel(streamId);
      showHealth(panel, status);
    }
  }

  function showHealth(panel, status) {
    panel.state = status.state;
    panel.el.dataset.state = status.state;
    panel.fields.reconnects.dd.textContent = String(status.reconnects);
    const lost = Object.values(status.dropped || {}).reduce((a, b) => a + b, 0);
    panel.fields.lost.dd.textContent = String(lost);
    panel.fields.lost.dd.title = Object.entries(status.dropped || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    const down = status.state !== "live";
    if (down) panel.badge.textContent = status.state;
    panel.placeholder.hidden = !down;
    if (down) {
      const age = isNum(status.last_frame_age_ms) ? `, last frame ${(status.last_frame_age_ms / 1000).toFixed(1)} s ago` : "";
      panel.placeholder.textContent = `${status.state}${age} · ${status.reconnects} reconnects`;
    }
  }

  setInterval(() => {
    const now = performance.now();
    for (const panel of panels.values()) {
      const stale = now - panel.receivedAt > STALE_AFTER_MS;
      panel.el.classList.toggle("stale", stale);
      // The server's state (stalled, reconnecting, ...) wins over the page's own guess.
      panel.badge.textContent = panel.state !== "live" ? panel.state : (stale ? "stale" : "live");
    }
    pollStreams();
  }, TICK_MS);

  connect();
})();
