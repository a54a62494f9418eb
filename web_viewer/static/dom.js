// One element with its class and properties (textContent, title, hidden, type, width, ...): the page
// builds its panels from many small elements, and this keeps each to one line.
export function make(tag, className, props = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return Object.assign(node, props);
}
