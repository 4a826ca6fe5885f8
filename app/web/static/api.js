// Calls to the service's JSON API: one place for the API key, the error body and network failures.
// Every failure becomes an ApiError carrying the service's own {code, message, ...}, so the page
// can always show what went wrong; nothing is swallowed here.

const KEY_STORAGE = "ibrnet.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail.message);
    this.status = status;
    this.code = detail.code;
    this.detail = detail;
  }
}

export async function api(path, { method = "GET", body, accept, signal } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (accept) headers.accept = accept;
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers["X-API-Key"] = key;
    let response;
    try {
      response = await fetch(path, {
        method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, { code: "network_error", message: `the service did not answer (${error.message})` });
    }
    // A deployment with keys on answers 401: ask once, then repeat the call with the key.
    if (response.status === 401 && attempt === 0 && (await askForKey())) continue;
    if (response.ok) return response;
    throw new ApiError(response.status, await errorDetail(response));
  }
}

export async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// Save a response as a file: a fetch (so the key header goes along) turned into a download.
export async function download(path, filename) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function errorDetail(response) {
  try {
    const payload = await response.json();
    if (payload && payload.error && payload.error.code) return payload.error;
  } catch {
    // not our JSON error body (a proxy's page): fall through to the status line
  }
  return { code: `http_${response.status}`, message: `HTTP ${response.status} ${response.statusText}`.trim() };
}

function askForKey() {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  input.value = "";
  return new Promise((resolve) => {
    const finish = () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      resolve(Boolean(key));
    };
    dialog.addEventListener("close", finish, { once: true });
    document.getElementById("key-cancel").onclick = () => dialog.close("cancel");
    dialog.showModal();
  });
}
