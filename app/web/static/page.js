// The page's behaviour: one formula, a list, a screen. Each form's errors are shown beside it;
// anything else that fails lands in #notices, so no error is ever lost silently.

import { api, apiJson, ApiError, download } from "./api.js";
import { clearPlots, plotScreen } from "./plots.js";
import { clear, el, errorBox, label, predictionCard } from "./render.js";
import { formulasFromCsv, resultsCsv, resultsTable } from "./table.js";

const POLL_MS = 500;
const SCREEN_PAGE = 10_000; // the service's largest results page
const SCREEN_FETCH_LIMIT = 50_000; // rows brought into the page for the table and plots
const TABLE_ROWS_SHOWN = 1_000; // rows put in the DOM; downloads carry every row

const $ = (id) => document.getElementById(id);
const state = { models: [], limits: null, batchRows: [], job: null };

function notice(error) {
  const detail = error instanceof ApiError ? error.detail : { code: "page_error", message: String(error?.message ?? error) };
  $("notices").append(errorBox(null, detail));
}
window.addEventListener("error", (event) => notice(event.error ?? event.message));
window.addEventListener("unhandledrejection", (event) => notice(event.reason));

// -- start-up: which properties are served, and the request limits ---------------------------

async function start() {
  // One after the other: where keys are required, the first call's 401 asks for the key once.
  const models = await apiJson("/models");
  const limits = await apiJson("/limits");
  // Served properties: each model's, then the derived ones (e_above_hull from the MP model).
  state.models = [...models.models, ...(models.derived ?? [])];
  // Columns a screen can rank by besides properties (p_stable); "known" is a flag, not a ranking.
  state.screenColumns = (models.derived ?? []).flatMap((d) => d.screen_columns ?? []).filter((c) => c !== "known");
  state.limits = limits;
  for (const fieldset of document.querySelectorAll("[data-role=properties]")) {
    for (const model of state.models) {
      const id = `${fieldset.closest("form").id}-${model.property}`;
      fieldset.append(
        el("label", { class: "check", for: id },
          el("input", { type: "checkbox", id, value: model.property, checked: true }),
          ` ${label(model.property)} (${model.unit})`),
      );
    }
  }
  for (const name of [...state.models.map((m) => m.property), ...state.screenColumns]) {
    $("screen-sort").append(el("option", { value: name }, label(name)));
  }
  $("screen-max-atoms").max = String(limits.screen_max_atoms);
}

// The checked properties of a form; null (every served property) when all are checked.
function chosenProperties(form) {
  const boxes = [...form.querySelectorAll("[data-role=properties] input[type=checkbox]")];
  const checked = boxes.filter((box) => box.checked).map((box) => box.value);
  if (checked.length === 0) throw new ApiError(0, { code: "no_property", message: "choose at least one property" });
  return checked.length === boxes.length ? null : checked;
}

function withProperties(body, form) {
  const properties = chosenProperties(form);
  return properties ? { ...body, properties } : body;
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// -- one formula --------------------------------------------------------------------------

$("single-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const formula = $("single-formula").value;
  const out = $("single-result");
  busy($("single-submit"), async () => {
    clear(out);
    try {
      const body = withProperties({ formula }, $("single-form"));
      const answer = await apiJson("/predict", { method: "POST", body });
      out.append(predictionCard(answer));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      out.append(errorBox(formula, error.detail));
    }
  });
});

// -- many formulas ------------------------------------------------------------------------

async function batchFormulas() {
  const file = $("batch-file").files[0];
  if (file) {
    try {
      return formulasFromCsv(await file.text());
    } catch (error) {
      throw new ApiError(0, { code: "invalid_csv", message: `${file.name}: ${error.message}` });
    }
  }
  return $("batch-input").value.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "");
}

// Requests within the service's limits: at most max_batch_items formulas and max_body_bytes.
function chunks(formulas) {
  const maxItems = state.limits.max_batch_items;
  const maxBytes = state.limits.max_body_bytes - 1024; // room for the JSON around the list
  const encoder = new TextEncoder();
  const out = [];
  let current = [];
  let bytes = 0;
  for (const formula of formulas) {
    const size = encoder.encode(JSON.stringify(formula)).length + 1;
    if (current.length > 0 && (current.length >= maxItems || bytes + size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(formula);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

$("batch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("batch-result");
  const status = $("batch-status");
  busy($("batch-submit"), async () => {
    clear(out);
    $("batch-download").disabled = true;
    state.batchRows = [];
    try {
      const formulas = await batchFormulas();
      if (formulas.length === 0) throw new ApiError(0, { code: "no_formulas", message: "paste formulas or choose a CSV file" });
      const rows = [];
      for (const chunk of chunks(formulas)) {
        status.textContent = `${rows.length.toLocaleString()} of ${formulas.length.toLocaleString()} formulas…`;
        const answer = await apiJson("/predict/batch", { method: "POST", body: withProperties({ formulas: chunk }, $("batch-form")) });
        rows.push(...answer.results);
      }
      state.batchRows = rows;
      const refused = rows.filter((row) => row.error).length;
      status.textContent = `${rows.length.toLocaleString()} formulas, ${refused.toLocaleString()} refused`;
      out.append(resultsTable(rows, { caption: "Results in input order (click a column to sort)", limit: TABLE_ROWS_SHOWN }));
      if (rows.length > TABLE_ROWS_SHOWN) out.append(el("p", { class: "muted" }, `The first ${TABLE_ROWS_SHOWN} rows are shown; the download has all ${rows.length}.`));
      $("batch-download").disabled = false;
    } catch (error) {
      status.textContent = "";
      if (!(error instanceof ApiError)) throw error;
      out.append(errorBox(null, error.detail));
    }
  });
});

$("batch-download").addEventListener("click", () => {
  const blob = new Blob([resultsCsv(state.batchRows)], { type: "text/csv" });
  const link = el("a", { href: URL.createObjectURL(blob), download: "ibrnet-predictions.csv" });
  document.body.append(link);
  link.click();
  link.remove();
});

// -- screening ----------------------------------------------------------------------------

function screenRequest() {
  const form = $("screen-form");
  const body = {
    chemsys: $("screen-chemsys").value.trim(),
    max_atoms: Number($("screen-max-atoms").value),
  };
  // Left out, the service picks the column's natural order (most likely stable first for p_stable).
  if ($("screen-order").value) body.ascending = $("screen-order").value === "asc";
  if ($("screen-sort").value) body.sort_by = $("screen-sort").value;
  if ($("screen-top-k").value) body.top_k = Number($("screen-top-k").value);
  return withProperties(body, form);
}

$("screen-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("screen-result");
  busy($("screen-submit"), async () => {
    clear(out);
    clearPlots($("screen-histogram"), $("screen-map"));
    try {
      const request = screenRequest();
      const job = await apiJson("/screen", { method: "POST", body: request });
      state.job = { id: job.id, request };
      await followJob(job);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      out.append(errorBox(null, error.detail));
    } finally {
      $("screen-cancel").disabled = true;
    }
  });
});

async function followJob(job) {
  $("screen-job").hidden = false;
  $("screen-cancel").disabled = false;
  $("screen-download-csv").disabled = true;
  $("screen-download-parquet").disabled = true;
  let view = job;
  while (view.status === "queued" || view.status === "running") {
    showProgress(view);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    view = await apiJson(`/screen/${view.id}`);
  }
  showProgress(view);
  $("screen-cancel").disabled = true;
  if (view.status === "failed") {
    $("screen-result").append(errorBox(null, { code: "job_failed", message: view.error ?? "the screen failed" }));
    return;
  }
  $("screen-download-csv").disabled = false;
  $("screen-download-parquet").disabled = false;
  await showResults(view);
}

function showProgress(view) {
  const { done, total } = view.progress;
  const bar = $("screen-progress");
  bar.max = Math.max(total, 1);
  bar.value = done;
  const percent = total > 0 ? Math.floor((100 * done) / total) : 0;
  $("screen-status").textContent = `${view.status}: ${done.toLocaleString()} of ${total.toLocaleString()} compositions (${percent}%)`;
  $("screen-job").dataset.status = view.status;
}

async function showResults(view) {
  const rows = [];
  let cursor = "offset=0";
  let count = 0;
  // Pages by key (next_after): each page starts where the last ended, with no OFFSET to count.
  while (cursor !== null && rows.length < SCREEN_FETCH_LIMIT) {
    const page = await apiJson(`/screen/${view.id}/results?${cursor}&limit=${SCREEN_PAGE}`);
    rows.push(...page.results);
    count = page.count;
    cursor = page.next_after ? `after=${encodeURIComponent(page.next_after)}` : null;
  }
  const out = $("screen-result");
  const ranked = state.job.request.sort_by ? `ranked by ${label(state.job.request.sort_by)}` : "in enumeration order";
  out.append(resultsTable(rows, { caption: `${count.toLocaleString()} compositions, ${ranked}`, limit: TABLE_ROWS_SHOWN }));
  if (count > TABLE_ROWS_SHOWN) out.append(el("p", { class: "muted" }, `The first ${TABLE_ROWS_SHOWN} rows are shown; the downloads have all ${count.toLocaleString()}.`));
  // A screen ranked by a stability column plots e_above_hull, the property that column belongs to.
  const sortBy = state.screenColumns.includes(state.job.request.sort_by) ? "e_above_hull" : state.job.request.sort_by;
  const property = sortBy ?? Object.keys(rows.find((row) => row.predictions)?.predictions ?? {})[0];
  if (property) {
    const elements = state.job.request.chemsys.split("-").map((symbol) => symbol.trim()).filter(Boolean);
    const hull = rows.some((row) => row.predictions?.e_above_hull) && elements.length <= 3 ? await predictedHull(view.id) : null;
    plotScreen({ rows, elements, property, histogramNode: $("screen-histogram"), mapNode: $("screen-map"), hull });
  }
}

// The predicted hull of a finished stability screen; a screen that cannot have one plots without.
async function predictedHull(jobId) {
  try {
    return await apiJson(`/screen/${jobId}/hull`);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 409 || error.status === 422)) return null;
    throw error;
  }
}

$("screen-cancel").addEventListener("click", async () => {
  if (!state.job) return;
  $("screen-cancel").disabled = true;
  try {
    await api(`/screen/${state.job.id}`, { method: "DELETE" });
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("screen-result").append(errorBox(null, error.detail));
  }
});

for (const format of ["csv", "parquet"]) {
  $(`screen-download-${format}`).addEventListener("click", () => {
    if (state.job) download(`/screen/${state.job.id}/results?format=${format}`, `screen-${state.job.id}.${format}`).catch(notice);
  });
}

start().catch(notice);
