// Telemetry fields may be absent or null (no ground truth, a stage not timed): only a finite number is shown.
export function isNum(value) {
  return typeof value === "number" && Number.isFinite(value);
}
