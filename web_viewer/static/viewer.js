// roadseg live viewer: connects to /ws, draws the newest frame of each stream with its overlay.
//
// Protocol v2 (see web_viewer/hub.py and render.py): a text "hello" with the class table and the
// initial overlay opacity, then binary frames = uint32 BE header length N, N bytes of JSON header
// (seq, telemetry, jpeg_bytes, mask_bytes), the camera JPEG, then the category ids as a grey PNG of
// the JPEG's size. The page blends the overlay itself (opacity slider, class toggles), and shows the
// frame's telemetry from the same message in the same animation frame: pixels and numbers in step.
// Like the server, the page is latest-only: while a frame is being decoded, newer ones replace the
// waiting one, so a slow tab shows fresh frames, not a backlog.
"use strict";

(() => {
  const PROTOCOL_VERSION = 2;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const STALE_AFTER_MS = 3000; // a panel without frames for this long is dimmed
  const TICK_MS = 1000;
  const STATUS_URL = "/api/streams"; // per-stream state, reconnects, drops by cause (polled every tick)
  const TELEMETRY_URL = "/api/telemetry"; // per-stream stage latency percentiles, IoU so far (every tick)
  const HEADER_LEN_BYTES = 4;
  const HISTORY = 60; // IoU sparkline: this many frames
  const STAGES = [["queue", "queue"], ["preprocess", "pre"], ["inference", "model"], ["postprocess", "post"]];
  const OTHER_STAGE = "other"; // latency not in the four stages: IoU, mask compression, publish, waits

  const streamsEl = document.getElementById("streams");
  const emptyEl = document.getElementById("empty");
  const legendEl = document.getElementById("legend");
  const statusEl = document.getElementById("status");
  const statusTextEl = document.getElementById("status-text");
  const opacityEl = document.getElementById("opacity");
  const opacityValueEl = document.getElementById("opacity-value");
  const gridButton = document.getElementById("grid-button");
  const utf8 = new TextDecoder();
  const panels = new Map(); // stream id -> panel state
  let backoffMs = RECONNECT_MIN_MS;
  let classes = []; // [{id, name, color: [r, g, b]}] from the hello
  const enabled = new Uint8Array(256).fill(1); // per category id: drawn in the overlay
  const colours = new Uint8Array(256 * 3); // per category id: r, g, b
  let opacity = Number(opacityEl.value) / 100;
  let opacityTouched = false; // the user moved the slider: a reconnect's hello does not reset it
  let focused = null; // stream id shown large, or null: the grid
  const token = takeToken(); // auth.js
  const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};

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
    if (message.type !== "hello") return;
    if (message.v !== PROTOCOL_VERSION) console.warn(`viewer: server speaks protocol ${message.v}`);
    classes = message.classes || [];
    for (const cls of classes) colours.set(cls.color.slice(0, 3), cls.id * 3);
    if (isNum(message.alpha) && !opacityTouched) setOpacity(message.alpha);
    renderLegend();
    redrawAll();
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
    const maskStart = jpegStart + meta.jpeg_bytes;
    if (meta.v !== PROTOCOL_VERSION || maskStart + meta.mask_bytes !== buffer.byteLength) {
      console.warn("viewer: frame does not match protocol v2", meta);
      return;
    }
    const panel = panels.get(meta.stream) || createPanel(String(meta.stream));
    if (panel.next) panel.skipped += 1; // never decoded: a newer frame beat it
    panel.next = {
      meta,
      jpeg: new Uint8Array(buffer, jpegStart, meta.jpeg_bytes),
      mask: new Uint8Array(buffer, maskStart, meta.mask_bytes),
    };
    panel.receivedAt = performance.now();
    if (!panel.busy) drawLoop(panel);
  }

  // ------------------------------------------------------------------ drawing

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

  async function decode(meta, jpeg, mask) {
    const [image, ids] = await Promise.allSettled([
      createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })),
      // No colour management: the grey levels ARE the category ids.
      createImageBitmap(new Blob([mask], { type: "image/png" }),
                        { colorSpaceConversion: "none", premultiplyAlpha: "none" }),
    ]);
    if (image.status !== "fulfilled" || ids.status !== "fulfilled") {
      if (image.status === "fulfilled") image.value.close();
      if (ids.status === "fulfilled") ids.value.close();
      console.warn(`viewer: cannot decode frame ${meta.seq} of ${meta.stream}`);
      return null;
    }
    const bitmap = image.value;
    const frame = { bitmap, ids: readIds(ids.value, bitmap.width, bitmap.height), meta };
    ids.value.close();
    return frame;
  }

  let scratch = null; // one canvas to read mask pixels back from

  function readIds(maskBitmap, width, height) {
    if (!scratch) {
      const canvas = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(width, height)
        : document.createElement("canvas");
      scratch = canvas.getContext("2d", { willReadFrequently: true });
    }
    const canvas = scratch.canvas;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    scratch.imageSmoothingEnabled = false; // a mask of another size is scaled nearest: ids never mix
    scratch.drawImage(maskBitmap, 0, 0, width, height);
    const rgba = scratch.getImageData(0, 0, width, height).data;
    const ids = new Uint8Array(width * height);
    for (let i = 0, j = 0; i < ids.length; i += 1, j += 4) ids[i] = rgba[j];
    return ids;
  }

  function nextAnimationFrame() {
    return new Promise((resolve) => requestAnimationFrame(resolve));
  }

  // The camera image, then each enabled class's colour blended over it at the chosen opacity
  // (out = image * (1 - a) + colour * a, in integers: the server's render_overlay does the same).
  function compose(panel) {
    const frame = panel.frame;
    if (!frame) return;
    const { bitmap, ids } = frame;
    const canvas = panel.canvas;
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    const ctx = panel.ctx;
    ctx.drawImage(bitmap, 0, 0);
    const a = Math.round(opacity * 256);
    if (a === 0 || !classes.some((cls) => enabled[cls.id])) return;
    const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const px = image.data;
    const keep = 256 - a;
    for (let i = 0, j = 0; i < ids.length; i += 1, j += 4) {
      const id = ids[i];
      if (!enabled[id]) continue;
      const c = id * 3;
      px[j] = (px[j] * keep + colours[c] * a) >> 8;
      px[j + 1] = (px[j + 1] * keep + colours[c + 1] * a) >> 8;
      px[j + 2] = (px[j + 2] * keep + colours[c + 2] * a) >> 8;
    }
    ctx.putImageData(image, 0, 0);
  }

  function redrawAll() {
    for (const panel of panels.values()) compose(panel);
  }

  // ------------------------------------------------------------------ controls

  function setOpacity(value) {
    opacity = Math.min(1, Math.max(0, value));
    opacityEl.value = String(Math.round(opacity * 100));
    opacityValueEl.textContent = `${Math.round(opacity * 100)} %`;
  }

  opacityEl.addEventListener("input", () => {
    opacityTouched = true;
    setOpacity(Number(opacityEl.value) / 100);
    redrawAll();
  });

  function renderLegend() {
    legendEl.replaceChildren();
    for (const cls of classes) {
      const item = document.createElement("li");
      item.className = "legend-item";
      item.dataset.classId = String(cls.id);
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = "class-toggle";
      box.id = `class-${cls.id}`;
      box.dataset.classId = String(cls.id);
      box.checked = Boolean(enabled[cls.id]);
      box.addEventListener("change", () => {
        enabled[cls.id] = box.checked ? 1 : 0;
        item.classList.toggle("off", !box.checked);
        redrawAll();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      const [r, g, b] = cls.color;
      swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
      const name = document.createElement("span");
      name.textContent = cls.name;
      label.append(box, swatch, name);
      item.append(label);
      item.classList.toggle("off", !box.checked);
      legendEl.append(item);
    }
  }

  function setFocus(streamId) {
    focused = streamId;
    streamsEl.classList.toggle("has-focus", focused !== null);
    for (const [id, panel] of panels) {
      const isFocus = id === focused;
      panel.el.classList.toggle("focus", isFocus);
      panel.focusButton.textContent = isFocus ? "grid" : "focus";
      panel.focusButton.setAttribute("aria-pressed", String(isFocus));
    }
    gridButton.hidden = focused === null;
  }

  gridButton.addEventListener("click", () => setFocus(null));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && focused !== null) setFocus(null);
  });

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
    const quality = document.createElement("span");
    quality.className = "quality";
    quality.title = "JPEG quality the server sends this page (lower when the link cannot keep up)";
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "live";
    const focusButton = document.createElement("button");
    focusButton.type = "button";
    focusButton.className = "focus-button";
    focusButton.textContent = "focus";
    focusButton.setAttribute("aria-pressed", "false");
    focusButton.addEventListener("click", () => setFocus(focused === streamId ? null : streamId));
    head.append(name, quality, badge, focusButton);

    const view = document.createElement("div");
    view.className = "view";
    const canvas = document.createElement("canvas");
    canvas.width = 16; // placeholder 16:9 until the first frame sets the real size
    canvas.height = 9;
    canvas.title = "click: focus on this stream / back to the grid";
    canvas.addEventListener("click", () => setFocus(focused === streamId ? null : streamId));
    // Shown over the canvas while the stream is not live: why there is no picture.
    const placeholder = document.createElement("p");
    placeholder.className = "placeholder";
    placeholder.hidden = true;
    view.append(canvas, placeholder);

    const telemetry = document.createElement("section");
    telemetry.className = "telemetry";
    const metrics = document.createElement("dl");
    metrics.className = "metrics";
    const fields = {};
    for (const [key, label] of [["seq", "seq"], ["latency", "latency"], ["fps", "fps"], ["miou", "mIoU"],
                                ["size", "size"], ["valid", "valid"], ["state", "state"],
                                ["reconnects", "reconnects"], ["lost", "dropped"], ["skipped", "skipped"]]) {
      fields[key] = addMetric(metrics, label);
    }
    fields.skipped.dd.title = "frames this page received but never drew (a newer one came first)";
    fields.miou.row.hidden = true;
    const stages = buildStages();
    const drops = document.createElement("p");
    drops.className = "drops";
    const iou = buildIou();
    telemetry.append(metrics, stages.el, drops, iou.el);

    el.append(head, view, telemetry);
    insertSorted(el, streamId);
    emptyEl.hidden = true;

    const panel = {
      el, canvas, fields, badge, quality, placeholder, stages, drops, iou, focusButton, state: "live",
      ctx: canvas.getContext("2d", { alpha: false, willReadFrequently: true }),
      next: null, busy: false, frame: null, drawn: 0, skipped: 0, receivedAt: performance.now(),
      history: [], // per drawn frame: IoU per class (or null), newest last
    };
    panels.set(streamId, panel);
    if (focused !== null) setFocus(focused);
    return panel;
  }

  function addMetric(list, label) {
    const row = document.createElement("div");
    row.className = `metric metric-${label.toLowerCase()}`;
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = "–";
    row.append(dt, dd);
    list.append(row);
    return { row, dd };
  }

  // One row per stage: a bar (share of this frame's latency), this frame's ms, and p50/p99 so far.
  function buildStages() {
    const el = document.createElement("div");
    el.className = "stages";
    const rows = {};
    for (const [key, label] of [...STAGES, [OTHER_STAGE, "other"]]) {
      const row = document.createElement("div");
      row.className = "stage";
      row.dataset.stage = key;
      const name = document.createElement("span");
      name.className = "stage-name";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "stage-bar";
      const fill = document.createElement("span");
      fill.className = `stage-fill stage-${key}`;
      bar.append(fill);
      const ms = document.createElement("span");
      ms.className = "stage-ms";
      ms.textContent = "–";
      const pct = document.createElement("span");
      pct.className = "stage-pct";
      pct.title = "p50 / p99 over the stream's recent frames";
      row.append(name, bar, ms, pct);
      el.append(row);
      rows[key] = { row, fill, ms, pct };
    }
    return { el, rows };
  }

  // IoU per class with ground truth: this frame's value, the run's so far, and a sparkline.
  function buildIou() {
    const el = document.createElement("div");
    el.className = "iou";
    el.hidden = true;
    return { el, rows: new Map() };
  }

  function iouRow(panel, cls) {
    let row = panel.iou.rows.get(cls.id);
    if (row) return row;
    const el = document.createElement("div");
    el.className = "iou-row";
    el.dataset.classId = String(cls.id);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = cls.color;
    swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
    const name = document.createElement("span");
    name.className = "iou-name";
    name.textContent = cls.name;
    const now = document.createElement("span");
    now.className = "iou-now";
    const run = document.createElement("span");
    run.className = "iou-run";
    run.title = "IoU over the whole run so far";
    const spark = document.createElement("canvas");
    spark.className = "spark";
    spark.width = 96;
    spark.height = 18;
    el.append(swatch, name, now, run, spark);
    // Classes in id order, whatever order they first appear in.
    const after = [...panel.iou.rows.entries()].filter(([id]) => id > cls.id).sort((x, y) => x[0] - y[0])[0];
    panel.iou.el.insertBefore(el, after ? after[1].el : null);
    row = { el, now, run, spark, ctx: spark.getContext("2d") };
    panel.iou.rows.set(cls.id, row);
    return row;
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

  // ------------------------------------------------------------------ telemetry (per frame)

  function updateTelemetry(panel, meta) {
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

  function updateIou(panel, meta) {
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

  function isNum(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  // ------------------------------------------------------------------ stream health and run telemetry

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
    for (const [streamId, status] of Object.entries(streams)) {
      const panel = panels.get(streamId) || createPanel(streamId);
      showHealth(panel, status);
    }
  }

  const REASONS = {
    connecting: () => "no frame from this camera yet; still trying",
    stalled: () => "frames stopped arriving; reopening the camera",
    reconnecting: () => "the camera was lost; reconnecting",
    failed: () => "the stream broke and was given up",
    ended: (s) => `the recording ended after ${s.frames_in ?? "?"} frames`,
  };

  function showHealth(panel, status) {
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

  async function pollTelemetry() {
    const body = await getJson(TELEMETRY_URL);
    if (!body || !body.streams) return;
    for (const [streamId, stats] of Object.entries(body.streams)) {
      const panel = panels.get(streamId);
      if (!panel) continue;
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
      if (perClass) {
        for (const cls of classes) {
          const row = panel.iou.rows.get(cls.id);
          const value = perClass[cls.name];
          if (row) row.run.textContent = isNum(value) ? `run ${value.toFixed(3)}` : "";
        }
      }
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
    pollTelemetry();
  }, TICK_MS);

  setOpacity(opacity);
  connect();
})();
