// The tab, the run, the language and the inputs kept in the page's URL (?tab=score&...), so
// that a view can be shared and survives a reload. Only what the user set is written.

const FIELDS = ["prefix", "temperature", "top_k", "top_p", "seed", "max_new_tokens", "greedy",
                "run_b", "score-text", "score-reading", "score-colour", "state-text", "state-sort",
                "state-scale", "state-zoom", "state-threshold", "time-text", "train-x", "s-n",
                "s-batch", "s-steps", "s-seed"];

export const params = new URLSearchParams(location.search);

function write() {
  const query = params.toString();
  history.replaceState(null, "", query ? `${location.pathname}?${query}` : location.pathname);
}

export function setParam(name, value) {
  if (value === null || value === undefined || value === "") params.delete(name);
  else params.set(name, value);
  write();
}

function valueOf(el) {
  return el.type === "checkbox" ? (el.checked ? "1" : "") : el.value;
}

// Put the URL's values into the inputs (a <select> filled later keeps it in data-wanted).
export function restoreInputs() {
  for (const id of FIELDS) {
    const el = document.getElementById(id);
    if (!el || !params.has(id)) continue;
    const value = params.get(id);
    if (el.type === "checkbox") el.checked = value === "1";
    else el.value = value;
    el.dataset.wanted = value;
    if (el.tagName === "TEXTAREA") el.dataset.edited = "1";
  }
}

export function trackInputs() {
  for (const id of FIELDS) {
    const el = document.getElementById(id);
    if (!el) continue;
    const save = () => {
      if (el.tagName === "TEXTAREA") el.dataset.edited = "1";
      setParam(id, valueOf(el));
    };
    el.addEventListener("change", save);
    if (el.tagName === "TEXTAREA") el.addEventListener("input", save);
  }
}
