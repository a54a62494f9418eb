// The bird's-eye grid (GET /api/bev/<stream>.png) of streams run with a camera file (roadseg run --camera),
// shown beside each stream's camera view: inside the stream's panel (.panel[data-stream]) when the page has
// one, else in a section of its own. Self-contained on purpose: the viewer page only includes it, and it
// shares nothing with the viewer's modules but the token (auth.js) and the panels' markup.
import { authHeaders, token } from "./auth.js";

const REFRESH_MS = 500; // a new picture at most this often, never while one is still loading
const RETRY_MS = 2000; // after a failed picture
const STREAMS_MS = 2000; // how often the list of streams with a grid is asked for
const grids = new Map(); // stream id -> { figure, img, loading, retryAt }

function url(stream) {
  const query = new URLSearchParams({ t: String(Date.now()) });
  // An <img> cannot send a header: the query carries the token (without one, the page's cookie serves).
  if (token) query.set("token", token);
  return `/api/bev/${encodeURIComponent(stream)}.png?${query}`;
}

function fallbackSection() {
  let section = document.getElementById("bev-grids");
  if (!section) {
    section = document.createElement("section");
    section.id = "bev-grids";
    section.setAttribute("aria-label", "Bird's-eye grids");
    (document.querySelector("main") || document.body).appendChild(section);
  }
  return section;
}

function place(stream, entry) {
  const panel = [...document.querySelectorAll(".panel[data-stream]")].find((p) => p.dataset.stream === stream);
  if (panel) {
    if (entry.figure.parentElement !== panel) {
      const view = panel.querySelector(".view");
      if (view) view.after(entry.figure);
      else panel.appendChild(entry.figure);
    }
  } else if (!entry.figure.parentElement) {
    fallbackSection().appendChild(entry.figure);
  }
}

function entryFor(stream) {
  let entry = grids.get(stream);
  if (entry) return entry;
  const figure = document.createElement("figure");
  figure.className = "bev";
  figure.hidden = true;
  figure.style.margin = "0.4rem 0";
  const img = document.createElement("img");
  img.alt = `bird's-eye grid of ${stream}: forward up, unknown cells dark, a tick every 10 m`;
  img.style.maxHeight = "60vh";
  img.style.imageRendering = "pixelated";
  const caption = document.createElement("figcaption");
  caption.textContent = `${stream}: bird's-eye grid (metres, forward up)`;
  figure.append(img, caption);
  entry = { figure, img, loading: false, retryAt: 0 };
  img.addEventListener("load", () => {
    entry.loading = false;
    figure.hidden = false;
  });
  img.addEventListener("error", () => {
    entry.loading = false;
    figure.hidden = true;
    entry.retryAt = Date.now() + RETRY_MS;
  });
  grids.set(stream, entry);
  return entry;
}

async function refreshStreams() {
  try {
    const response = await fetch("/api/bev", { headers: authHeaders });
    if (response.ok) for (const stream of (await response.json()).streams) entryFor(stream);
  } catch {
    // the pipeline is gone or restarting: keep what we have
  }
}

function tick() {
  const now = Date.now();
  for (const [stream, entry] of grids) {
    place(stream, entry);
    if (!entry.loading && now >= entry.retryAt) {
      entry.loading = true;
      entry.img.src = url(stream);
    }
  }
}

refreshStreams();
setInterval(refreshStreams, STREAMS_MS);
setInterval(tick, REFRESH_MS);
