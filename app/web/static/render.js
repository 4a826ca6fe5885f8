// DOM building for answers: numbers, refused formulas, one prediction. User text only ever goes
// in through textContent, never as HTML.

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// Four significant digits: what the models resolve, and short enough for a phone's table.
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}

export function label(property) {
  return property.replaceAll("_", " ");
}

// The service's refusal: its code and message, and the formula with the offending token marked.
export function errorBox(formula, error) {
  const box = el("div", { class: "error", role: "alert", "data-code": error.code });
  box.append(el("p", {}, el("strong", {}, error.code), ": ", error.message));
  if (typeof formula === "string" && formula.length > 0) {
    const marked = highlightToken(formula, error);
    if (marked) box.append(el("p", { class: "formula-echo" }, ...marked));
  }
  return box;
}

function highlightToken(formula, error) {
  const token = typeof error.token === "string" ? error.token : error.element;
  let start = Number.isInteger(error.position) ? error.position : -1;
  if (start < 0 && typeof token === "string" && token) start = formula.indexOf(token);
  if (start < 0 || start > formula.length) return null;
  const length = typeof token === "string" && token ? token.length : 1;
  return [
    formula.slice(0, start),
    el("mark", { "data-role": "offending-token" }, formula.slice(start, start + length) || "␣"),
    formula.slice(start + length),
  ];
}

// One formula's answer: every property with value, unit, uncertainty and interval when present.
export function predictionCard(answer) {
  const entries = Object.entries(answer.predictions);
  // Derived properties (stability) add fields of their own; their column appears only then.
  const withExtras = entries.some(([, p]) => extrasText(p) !== "");
  const titles = ["Property", "Value", "Unit", "Uncertainty (1σ)", "Interval", ...(withExtras ? ["Stability"] : []), "Model"];
  const rows = entries.map(([property, p]) =>
    el(
      "tr",
      { "data-property": property },
      el("th", { scope: "row" }, label(property)),
      el("td", { class: "num", "data-role": "value", "data-value": p.value ?? "" }, formatNumber(p.value)),
      el("td", {}, p.unit),
      el("td", { class: "num", "data-role": "uncertainty" }, p.uncertainty == null ? "—" : `± ${formatNumber(p.uncertainty)}`),
      el("td", { class: "num", "data-role": "interval" }, p.in_domain === false ? "— (outside training domain)" : intervalText(p.interval)),
      withExtras ? el("td", { class: "wrap" }, extrasText(p)) : null,
      el("td", { class: "muted" }, `${p.model} ${p.version}${p.cached ? " (cached)" : ""}`),
    ),
  );
  // An answer outside its model's training domain is an extrapolation: say which, and why.
  const warnings = entries
    .filter(([, p]) => p.in_domain === false && p.domain_warning)
    .map(([property, p]) => el("li", { "data-role": "domain-warning", "data-property": property }, `${label(property)}: ${p.domain_warning.message}`));
  return el(
    "div",
    { class: "card" },
    el("p", {}, "Composition ", el("code", { "data-role": "composition" }, answer.composition)),
    tableWrap(
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, ...titles.map((title) => el("th", { scope: "col" }, title)))),
        el("tbody", {}, ...rows),
      ),
    ),
    warnings.length ? el("ul", { class: "warnings" }, ...warnings) : null,
  );
}

export function intervalText(interval) {
  if (!interval) return "—";
  const level = interval.level ? ` (${Math.round(interval.level * 100)}%)` : "";
  return `${formatNumber(interval.low)} … ${formatNumber(interval.high)}${level}`;
}

// Fields a derived property may add (stability: p_stable, known, reference_value); shown when sent.
function extrasText(prediction) {
  const parts = [];
  if (prediction.p_stable !== undefined && prediction.p_stable !== null) parts.push(`P(stable) ${formatNumber(prediction.p_stable)}`);
  if (prediction.known) {
    // The reference's own (DFT) answer against the same hull, beside the prediction.
    const own = prediction.reference_value;
    parts.push(own === undefined || own === null ? "known compound" : `known compound, reference ${formatNumber(own)}`);
  }
  if (prediction.decomposition) {
    const phases = Object.entries(prediction.decomposition).map(([phase, share]) => `${formatNumber(share)} ${phase}`);
    parts.push(`hull: ${phases.join(" + ")}`);
  }
  if (prediction.error) parts.push(prediction.error.message);
  return parts.join("; ");
}

export function tableWrap(table) {
  return el("div", { class: "table-wrap", tabindex: "0" }, table);
}

export function clear(node) {
  node.replaceChildren();
}
