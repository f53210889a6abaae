// The /v1 API, called with the signed-in token as a Bearer header (never a cookie).

const TOKEN_KEY = "webhook-router.token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// `query` values that are empty are left out; `body` is sent as JSON.
export async function api(method, path, { query = {}, body } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${token.get() ?? ""}` };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const errors = data?.errors ?? [];
    const message = errors.map((e) => e.message).join("; ") || `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

// The Prometheus text of /metrics (no token needed), as {name: [{labels, value}]}.
export async function metrics() {
  const response = await fetch("/metrics", { credentials: "omit", cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, `metrics: HTTP ${response.status}`);
  const samples = {};
  for (const line of (await response.text()).split("\n")) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([^ ]+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2];
    }
    (samples[match[1]] ??= []).push({ labels, value: Number(match[3]) });
  }
  return samples;
}
