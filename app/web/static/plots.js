// A screen's plots with plotly.js (served by the app from the plotly wheel): the distribution of
// the ranked property, and for 2- and 3-element systems the property against composition.

import { label } from "./render.js";

const CONFIG = { responsive: true, displaylogo: false };
const MARGIN = { l: 60, r: 20, t: 40, b: 50 };
// Below the plot: the ternary's colour bar already takes the right-hand side.
const LEGEND = { orientation: "h", x: 0, y: -0.2 };
// Titles on the left: plotly's tool bar sits on the right of the same band.
const title = (text) => ({ text, x: 0.01, xanchor: "left", font: { size: 14 } });

// Stability first when the service serves it, then formation energy: what a composition map is for.
const MAP_PREFERENCE = ["e_above_hull", "formation_energy_mp", "formation_enthalpy"];

export function clearPlots(...nodes) {
  for (const node of nodes) {
    if (window.Plotly) window.Plotly.purge(node);
    node.replaceChildren();
    node.hidden = true;
  }
}

export function plotScreen({ rows, elements, property, histogramNode, mapNode, hull = null }) {
  if (!window.Plotly) throw new Error("plotly.js did not load (GET /vendor/plotly.min.js)");
  const good = rows.filter((row) => row.predictions && row.predictions[property]?.value != null);
  const values = good.map((row) => row.predictions[property].value);
  const unit = good[0]?.predictions[property].unit ?? "";
  // Both shown before either is drawn: plotly sizes a plot from its node's width once, and that
  // width depends on whether the grid holds one plot or two.
  const drawMap = elements.length === 2 || elements.length === 3;
  histogramNode.hidden = false;
  mapNode.hidden = !drawMap;
  window.Plotly.newPlot(
    histogramNode,
    [{ type: "histogram", x: values, marker: { color: "#2a6f97" } }],
    {
      title: title(`${label(property)}: ${values.length} compositions`),
      xaxis: { title: { text: `${label(property)} (${unit})` } },
      yaxis: { title: { text: "compositions" } },
      margin: MARGIN,
    },
    CONFIG,
  );
  const mapProperty = MAP_PREFERENCE.find((name) => good.some((row) => row.predictions[name])) ?? property;
  if (!drawMap) return;
  if (elements.length === 2) plotBinary(mapNode, good, elements, mapProperty, hull);
  else plotTernary(mapNode, good, elements, mapProperty, hull);
}

// The predicted hull's phases (GET /screen/{id}/hull) as a trace: a line for a binary.
function hullTrace(hull, coordinates, extra = {}) {
  const phases = hull.phases;
  return {
    name: "predicted hull",
    text: phases.map((p) => `${p.composition} (${p.source})`),
    hovertemplate: "%{text}<br>%{customdata:.3f} eV/atom<extra></extra>",
    customdata: phases.map((p) => p.formation_energy),
    marker: { size: 11, symbol: "diamond", color: phases.map((p) => (p.source === "predicted" ? "#d1495b" : "#222")) },
    ...coordinates(phases),
    ...extra,
  };
}

function plotBinary(node, rows, [first, second], property, hull) {
  // With a predicted hull, energies are drawn against it: the formation energy the hull is made of.
  const shown = hull ? "formation_energy_mp" : property;
  const points = rows
    .map((row) => ({ row, fractions: fractionsOf(row.composition) }))
    .filter(({ fractions, row }) => fractions && row.predictions[shown])
    .map(({ row, fractions }) => ({ x: fractions[second] ?? 0, y: row.predictions[shown].value, text: row.composition }))
    .sort((a, b) => a.x - b.x);
  const unit = rows[0]?.predictions[shown]?.unit ?? "";
  const traces = [{ name: label(shown), type: "scatter", mode: hull ? "markers" : "lines+markers", x: points.map((p) => p.x), y: points.map((p) => p.y), text: points.map((p) => p.text), hovertemplate: "%{text}<br>%{y:.3f}<extra></extra>" }];
  if (hull) {
    const ordered = { ...hull, phases: [...hull.phases].sort((a, b) => a.fractions[second] - b.fractions[second]) };
    traces.push(hullTrace(ordered, (phases) => ({ x: phases.map((p) => p.fractions[second]), y: phases.map((p) => p.formation_energy) }), { type: "scatter", mode: "lines+markers", line: { color: "#d1495b" } }));
  }
  property = shown;
  window.Plotly.newPlot(
    node,
    traces,
    {
      title: title(`${label(property)} across ${first}–${second}`),
      xaxis: { title: { text: `fraction of ${second}` }, range: [0, 1] },
      showlegend: Boolean(hull),
      legend: LEGEND,
      yaxis: { title: { text: `${label(property)} (${unit})` } },
      margin: MARGIN,
    },
    CONFIG,
  );
}

function plotTernary(node, rows, [a, b, c], property, hull) {
  const points = rows
    .map((row) => ({ row, fractions: fractionsOf(row.composition) }))
    .filter(({ fractions, row }) => fractions && row.predictions[property]);
  const unit = rows[0]?.predictions[property]?.unit ?? "";
  window.Plotly.newPlot(
    node,
    [{
      name: label(property),
      type: "scatterternary",
      mode: "markers",
      a: points.map((p) => p.fractions[a] ?? 0),
      b: points.map((p) => p.fractions[b] ?? 0),
      c: points.map((p) => p.fractions[c] ?? 0),
      text: points.map((p) => p.row.composition),
      hovertemplate: "%{text}<br>%{marker.color:.3f}<extra></extra>",
      marker: {
        size: 9,
        color: points.map((p) => p.row.predictions[property].value),
        colorscale: "Viridis",
        colorbar: { title: { text: unit } },
      },
    },
    ...(hull ? [hullTrace(hull, (phases) => ({ a: phases.map((p) => p.fractions[a]), b: phases.map((p) => p.fractions[b]), c: phases.map((p) => p.fractions[c]) }), { type: "scatterternary", mode: "markers" })] : [])],
    {
      title: title(`${label(property)} across ${a}–${b}–${c}`),
      ternary: { aaxis: { title: { text: a } }, baxis: { title: { text: b } }, caxis: { title: { text: c } } },
      showlegend: Boolean(hull),
      legend: LEGEND,
      margin: MARGIN,
    },
    CONFIG,
  );
}

// Atomic fractions of a canonical composition key ("Li2FeO3" → {Li: 1/3, Fe: 1/6, O: 1/2}).
export function fractionsOf(composition) {
  if (typeof composition !== "string") return null;
  const amounts = {};
  let total = 0;
  for (const [, symbol, amount] of composition.matchAll(/([A-Z][a-z]*)(\d*\.?\d*)/g)) {
    const value = amount === "" ? 1 : Number(amount);
    amounts[symbol] = (amounts[symbol] ?? 0) + value;
    total += value;
  }
  if (total <= 0) return null;
  for (const symbol of Object.keys(amounts)) amounts[symbol] /= total;
  return amounts;
}
