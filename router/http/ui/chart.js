// A small line chart drawn as SVG elements (no library, no inline style: the page's CSP).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 200;
const PAD = 28;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

// series: [{name, cls, values: [number]}], all of the same length; labels: one per value.
export function lineChart(title, series, labels) {
  const count = labels.length;
  const peak = Math.max(1, ...series.flatMap((s) => s.values));
  const x = (i) => PAD + (count <= 1 ? 0 : (i * (WIDTH - 2 * PAD)) / (count - 1));
  const y = (v) => HEIGHT - PAD - (v * (HEIGHT - 2 * PAD)) / peak;
  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
    preserveAspectRatio: "none",
  });
  const titleEl = svg("title");
  titleEl.textContent = title;
  root.append(titleEl);
  for (const fraction of [0, 0.5, 1]) {
    const level = y(peak * fraction);
    root.append(svg("line", { x1: PAD, x2: WIDTH - PAD, y1: level, y2: level, class: "grid" }));
    const tick = svg("text", { x: 2, y: level + 4, class: "tick" });
    tick.textContent = String(Math.round(peak * fraction));
    root.append(tick);
  }
  for (const s of series) {
    const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, class: `line ${s.cls}` }));
  }
  return root;
}
