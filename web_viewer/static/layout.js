// The grid of stream panels: in alphabetical order, one of them optionally focused (shown large;
// Escape or "back to the grid" returns). Works on the panels' markup (.panel[data-stream]).
const streamsEl = document.getElementById("streams");
const emptyEl = document.getElementById("empty");
const gridButton = document.getElementById("grid-button");
let focused = null; // stream id shown large, or null: the grid

export function addToGrid(el) {
  insertSorted(el, el.dataset.stream);
  emptyEl.hidden = true;
  if (focused !== null) setFocus(focused);
}

// The panel's focus button and a click on its picture: focus on it, or back to the grid.
export function toggleFocus(streamId) {
  setFocus(focused === streamId ? null : streamId);
}

function setFocus(streamId) {
  focused = streamId;
  streamsEl.classList.toggle("has-focus", focused !== null);
  for (const el of streamsEl.querySelectorAll(":scope > .panel")) {
    const isFocus = el.dataset.stream === focused;
    const focusButton = el.querySelector(".focus-button");
    el.classList.toggle("focus", isFocus);
    focusButton.textContent = isFocus ? "grid" : "focus";
    focusButton.setAttribute("aria-pressed", String(isFocus));
  }
  gridButton.hidden = focused === null;
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

gridButton.addEventListener("click", () => setFocus(null));
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && focused !== null) setFocus(null);
});
