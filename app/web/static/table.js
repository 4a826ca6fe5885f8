// Result rows (from /predict/batch or a screen's results) as a sortable table and as CSV.
// A row is the service's item: {formula, composition, predictions} or {formula, error}.

import { el, formatNumber, label, tableWrap } from "./render.js";

export function propertiesOf(rows) {
  const seen = new Set();
  for (const row of rows) for (const name of Object.keys(row.predictions ?? {})) seen.add(name);
  return [...seen];
}

// columns: index (input position), formula, composition, each property (± uncertainty), error.
export function resultsTable(rows, { caption, limit = Infinity } = {}) {
  const properties = propertiesOf(rows);
  const numbered = rows.map((row, position) => ({ row, index: row.index ?? position }));
  const table = el("table", { class: "results" });
  if (caption) table.append(el("caption", {}, caption));
  const headers = [
    { key: "index", title: "#", value: (r) => r.index },
    { key: "formula", title: "Formula", value: (r) => r.row.formula },
    { key: "composition", title: "Composition", value: (r) => r.row.composition ?? null },
    ...properties.map((p) => ({ key: p, title: label(p), value: (r) => r.row.predictions?.[p]?.value ?? null })),
    { key: "error", title: "Refused", value: (r) => r.row.error?.code ?? null },
  ];
  const body = el("tbody");
  const state = { key: null, ascending: true };
  const render = () => {
    const ordered = [...numbered];
    if (state.key) {
      const header = headers.find((h) => h.key === state.key);
      ordered.sort((a, b) => compare(header.value(a), header.value(b), state.ascending));
    }
    body.replaceChildren(...ordered.slice(0, limit).map((r) => rowElement(r, properties)));
  };
  const headRow = el("tr");
  for (const header of headers) {
    const button = el("button", { type: "button", class: "sort", "data-sort": header.key }, header.title);
    const th = el("th", { scope: "col", "aria-sort": "none" }, button);
    button.addEventListener("click", () => {
      state.ascending = state.key === header.key ? !state.ascending : true;
      state.key = header.key;
      for (const cell of headRow.children) cell.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", state.ascending ? "ascending" : "descending");
      render();
    });
    headRow.append(th);
  }
  table.append(el("thead", {}, headRow), body);
  render();
  return tableWrap(table);
}

// Missing values (refused rows, n/a) sort last in both directions.
function compare(a, b, ascending) {
  if (a === null && b === null) return 0;
  if (a === null) return 1;
  if (b === null) return -1;
  const order = typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
  return ascending ? order : -order;
}

function rowElement({ row, index }, properties) {
  const cells = [el("td", { class: "num" }, String(index)), el("td", {}, row.formula)];
  if (row.error) {
    cells.push(el("td", {}, "—"), ...properties.map((property) => el("td", { "data-property": property, "data-value": "" }, "")));
    cells.push(el("td", { class: "refusal", "data-code": row.error.code }, `${row.error.code}: ${row.error.message}`));
    return el("tr", { class: "refused", "data-index": index }, ...cells);
  }
  cells.push(el("td", {}, el("code", {}, row.composition)));
  for (const property of properties) {
    const p = row.predictions[property];
    let text = p ? formatNumber(p.value) + (p.uncertainty == null ? "" : ` ± ${formatNumber(p.uncertainty)}`) : "";
    if (p?.p_stable != null) text += ` · P ${formatNumber(p.p_stable)}${p.known ? " · known" : ""}`;
    cells.push(el("td", { class: "num", "data-property": property, "data-value": p?.value ?? "" }, text));
  }
  cells.push(el("td", {}, ""));
  return el("tr", { "data-index": index }, ...cells);
}

// The rows as CSV in input order, with units in the header.
export function resultsCsv(rows) {
  const properties = propertiesOf(rows);
  const units = {};
  for (const row of rows) for (const [name, p] of Object.entries(row.predictions ?? {})) units[name] = p.unit;
  const header = ["index", "formula", "composition"];
  // Stability answers carry fields of their own: they get columns too, as in the service's CSV.
  const stability = properties.filter((p) => rows.some((row) => row.predictions?.[p]?.p_stable !== undefined));
  for (const p of properties) {
    header.push(`${p} (${units[p]})`, `${p}_uncertainty`);
    if (stability.includes(p)) header.push("p_stable", "known", "reference_value", "decomposition");
  }
  header.push("error_code", "error_message");
  const lines = [header.map(csvText).join(",")];
  rows.forEach((row, position) => {
    const cells = [String(row.index ?? position), csvText(row.formula), csvText(row.composition ?? "")];
    for (const p of properties) {
      const prediction = row.predictions?.[p];
      cells.push(csvNumber(prediction?.value), csvNumber(prediction?.uncertainty));
      if (stability.includes(p)) {
        const phases = Object.entries(prediction?.decomposition ?? {}).map(([phase, share]) => `${share} ${phase}`);
        cells.push(
          csvNumber(prediction?.p_stable),
          prediction ? String(Boolean(prediction.known)) : "",
          csvNumber(prediction?.reference_value),
          csvText(phases.join(" + ")),
        );
      }
    }
    cells.push(csvText(row.error?.code ?? ""), csvText(row.error?.message ?? ""));
    lines.push(cells.join(","));
  });
  return `${lines.join("\r\n")}\r\n`;
}

function csvNumber(value) {
  return value === null || value === undefined ? "" : String(value);
}

// Text cells: quoted, and a leading = + - @ (a spreadsheet formula) defused with an apostrophe.
function csvText(value) {
  let text = String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return `"${text.replaceAll('"', '""')}"`;
}

// Formulas from a CSV file: the column named "formula" (any case), quoted fields allowed.
export function formulasFromCsv(text) {
  const records = parseCsv(text);
  if (records.length === 0) throw new Error("the file is empty");
  const column = records[0].findIndex((name) => name.trim().toLowerCase() === "formula");
  if (column < 0) throw new Error(`no 'formula' column in the header (${records[0].join(", ")})`);
  return records.slice(1).map((record) => (record[column] ?? "").trim()).filter((formula) => formula !== "");
}

function parseCsv(text) {
  const records = [];
  let record = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const char = text[i];
    if (quoted) {
      if (char === '"' && text[i + 1] === '"') { field += '"'; i += 1; }
      else if (char === '"') quoted = false;
      else field += char;
    } else if (char === '"') quoted = true;
    else if (char === ",") { record.push(field); field = ""; }
    else if (char === "\n" || char === "\r") {
      if (char === "\r" && text[i + 1] === "\n") i += 1;
      record.push(field); field = "";
      if (record.some((cell) => cell !== "")) records.push(record);
      record = [];
    } else field += char;
  }
  record.push(field);
  if (record.some((cell) => cell !== "")) records.push(record);
  return records;
}
