// The overlay, composed in the page: the camera image, then each enabled class's colour blended over it
// at the chosen opacity. The hello gives the classes and the starting opacity; the slider and the
// legend's class toggles change them for every stream at once.
import { isNum } from "./numbers.js";

const legendEl = document.getElementById("legend");
const opacityEl = document.getElementById("opacity");
const opacityValueEl = document.getElementById("opacity-value");
export let classes = []; // [{id, name, color: [r, g, b]}] from the hello
const enabled = new Uint8Array(256).fill(1); // per category id: drawn in the overlay
const colours = new Uint8Array(256 * 3); // per category id: r, g, b
let opacity = Number(opacityEl.value) / 100;
let opacityTouched = false; // the user moved the slider: a reconnect's hello does not reset it
let redrawAll = null; // recomposes every stream's frame after a control changed

export function initOverlay(redraw) {
  redrawAll = redraw;
  opacityEl.addEventListener("input", () => {
    opacityTouched = true;
    setOpacity(Number(opacityEl.value) / 100);
    redrawAll();
  });
  setOpacity(opacity);
}

// Every (re)connection's hello: the class table, the server's opacity unless the user chose one.
export function applyHello(message) {
  classes = message.classes || [];
  for (const cls of classes) colours.set(cls.color.slice(0, 3), cls.id * 3);
  if (isNum(message.alpha) && !opacityTouched) setOpacity(message.alpha);
  renderLegend();
}

// out = image * (1 - a) + colour * a, in integers: the server's render_overlay does the same.
export function compose(panel) {
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

function setOpacity(value) {
  opacity = Math.min(1, Math.max(0, value));
  opacityEl.value = String(Math.round(opacity * 100));
  opacityValueEl.textContent = `${Math.round(opacity * 100)} %`;
}

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
