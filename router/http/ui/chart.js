// A small line chart drawn as SVG elements (no library, no inline style: the page's CSP).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 900;
const HEIGHT = 240;
const PAD = 32;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

// series: [{name, cls, values: [number]}], all of the same length (at least one value).
export function lineChart(title, series) {
  const count = series[0].values.length;
  // A top value divisible by 4, so every grid line is labelled with a whole number.
  const peak = Math.max(4, Math.ceil(Math.max(...series.flatMap((s) => s.values)) / 4) * 4);
  const x = (i) => PAD + (count <= 1 ? 0 : (i * (WIDTH - 2 * PAD)) / (count - 1));
  const y = (v) => HEIGHT - PAD - (v * (HEIGHT - 2 * PAD)) / peak;
  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  const titleEl = svg("title");
  titleEl.textContent = title;
  root.append(titleEl);
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const level = y(peak * fraction);
    root.append(svg("line", { x1: PAD, x2: WIDTH - PAD, y1: level, y2: level, class: "grid" }));
    const tick = svg("text", { x: 2, y: level + 4, class: "tick" });
    tick.textContent = String(Math.round(peak * fraction));
    root.append(tick);
  }
  for (const s of series) {
    const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, class: `line ${s.cls}` }));
    // The newest value as a dot, so a series is visible from its first point.
    const last = s.values.length - 1;
    root.append(svg("circle", { cx: x(last), cy: y(s.values[last]), r: 4, class: `dot ${s.cls}` }));
  }
  return root;
}
