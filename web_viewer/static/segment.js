// roadseg upload page: POST one image (and optionally its ground truth) to /api/segment and show
// image | prediction | truth with the class area fractions and, given a truth, the IoU.
//
// One request per upload: ?format=json&images=1 returns the description plus the predicted and
// true masks as PNG data URLs; the image panel shows the file itself (a blob URL, no round trip).
import { authHeaders } from "./auth.js";

const API_URL = "/api/segment?format=json&images=1";

const form = document.getElementById("upload");
const imageInput = document.getElementById("image");
const labelInput = document.getElementById("label");
const submitButton = document.getElementById("submit");
const messageEl = document.getElementById("message");
const panelsEl = document.getElementById("panels");
const resultsEl = document.getElementById("results");
const summaryEl = document.getElementById("summary");
const fractionsEl = document.getElementById("fractions");
const modelEl = document.getElementById("model");
const imagePanel = document.getElementById("panel-image");
const predictionPanel = document.getElementById("panel-prediction");
const truthPanel = document.getElementById("panel-truth");
let imageUrl = null; // the blob URL of the shown upload, revoked when replaced

function setState(state, text) {
  document.body.dataset.state = state;
  messageEl.textContent = text;
}

form.addEventListener("submit", (event) => {
  event.preventDefault(); // fetch instead: the answer is drawn here, not navigated to
  segment();
});

async function segment() {
  const image = imageInput.files[0];
  if (!image) {
    setState("error", "Choose an image first (JPEG or PNG).");
    return;
  }
  const label = labelInput.files[0];
  const body = new FormData();
  body.append("image", image, image.name);
  if (label) body.append("label", label, label.name);
  submitButton.disabled = true;
  setState("busy", `Segmenting ${image.name}…`);
  try {
    const headers = { Accept: "application/json", ...authHeaders };
    const response = await fetch(API_URL, { method: "POST", body, headers, credentials: "same-origin" });
    let result;
    try {
      result = await response.json();
    } catch (err) {
      throw new Error(`the server answered HTTP ${response.status} without a description`);
    }
    if (!response.ok) throw new Error(result.error || `HTTP ${response.status}`);
    await show(image, result);
    const ms = result.timings_ms && result.timings_ms.total;
    setState("done", `${image.name}: ${result.width}x${result.height}` +
      (ms !== undefined ? `, ${Math.round(ms)} ms` : ""));
  } catch (err) {
    setState("error", `Could not segment ${image.name}: ${err.message || err}`);
  } finally {
    submitButton.disabled = false;
  }
}

async function show(file, result) {
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = URL.createObjectURL(file);
  const truth = result.images && result.images.truth;
  truthPanel.hidden = !truth;
  panelsEl.hidden = false;
  const loads = [
    load(imagePanel.querySelector("img"), imageUrl),
    load(predictionPanel.querySelector("img"), result.images.prediction),
  ];
  if (truth) loads.push(load(truthPanel.querySelector("img"), truth));
  await Promise.all(loads);
  modelEl.textContent = result.model;
  renderSummary(result);
  renderClasses(result);
  resultsEl.classList.toggle("scored", Boolean(result.iou));
  resultsEl.hidden = false;
}

function load(img, src) {
  img.src = src;
  return img.decode().catch(() => {
    throw new Error("the browser cannot show the returned image");
  });
}

function renderSummary(result) {
  summaryEl.replaceChildren();
  const rows = [
    ["model", `${result.model} · ${result.backend} ${result.device} ${result.precision}`],
    ["size", `${result.width}x${result.height}`],
  ];
  const t = result.timings_ms || {};
  if (t.total !== undefined) rows.push(["total", `${t.total.toFixed(0)} ms`]);
  if (t.model !== undefined) rows.push(["model time", `${t.model.toFixed(0)} ms`]);
  if (result.iou) {
    rows.push(["mean IoU", percent(result.iou.mean)]);
    rows.push(["category IoU", percent(result.iou.category_iou)]);
    rows.push(["pixel accuracy", percent(result.iou.pixel_accuracy)]);
  }
  if (result.valid === false) rows.push(["warning", "non-finite model output"]);
  for (const [label, value] of rows) {
    const row = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.metric = label;
    row.append(dt, dd);
    summaryEl.append(row);
  }
}

function renderClasses(result) {
  fractionsEl.replaceChildren();
  const colours = new Map((result.classes || []).map((c) => [c.name, c.color]));
  const perClass = (result.iou && result.iou.per_class) || {};
  for (const [name, fraction] of Object.entries(result.fractions || {})) {
    const tr = document.createElement("tr");
    tr.dataset.class = name;
    const nameCell = document.createElement("td");
    const wrap = document.createElement("span");
    wrap.className = "name";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const rgb = colours.get(name);
    if (rgb) swatch.style.background = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
    else swatch.style.visibility = "hidden"; // road: a layer of flat, no colour of its own
    wrap.append(swatch, document.createTextNode(name));
    nameCell.append(wrap);
    const area = document.createElement("td");
    area.className = "num";
    area.textContent = percent(fraction);
    const iou = document.createElement("td");
    iou.className = "num iou-col";
    iou.textContent = name in perClass ? percent(perClass[name]) : "";
    tr.append(nameCell, area, iou);
    fractionsEl.append(tr);
  }
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`;
}
