// transferkit studio: the page over /api. No framework, nothing from elsewhere; every text a
// user's files can carry (paths, class names) goes in as text, never as HTML.

import { labelTab } from "./label.js";

const $ = (id) => document.getElementById(id);
const state = { datasets: [], current: null, summary: null, page: 0, perPage: 60, selected: new Set(), jobs: [],
  openLogs: new Set(), openGroups: new Set(["exact copies", "near copies"]), jobStatus: new Map(), jobsDrawn: "",
  // this tab's name for itself: its undo undoes its own changes, never another tab's
  client: (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2)) };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM: allowed by the page's CSP (no inline style attributes)
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

async function api(path, options = {}) {
  const init = { ...options, headers: { ...(options.headers || {}) } };
  if (init.method && init.method !== "GET") {
    init.headers["X-Studio"] = "1";
    if (init.body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(init.body); }
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(typeof body.detail === "string" ? body.detail : `${response.status} ${response.statusText}`);
    error.field = body.field || null;  // the form field the error is about
    throw error;
  }
  return body;
}

function say(text, bad = false) {
  const s = $("status");
  s.textContent = text;
  s.className = bad ? "error" : "muted";
}

const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined)).toString();
const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%");
const num = (x, d = 4) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));

// ---------------------------------------------------------------- tabs
const TABS = ["data", "train", "jobs", "runs", "label"];
let label = null;  // the Label tab (label.js), made at start

function showTab(name) {
  for (const t of TABS) {
    $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(`view-${t}`).hidden = t !== name;
  }
  if (name === "runs") loadRuns();
  if (name === "jobs") renderJobs();
  if (name === "label") label.onShow().catch((e) => say(e.message, true));
}

// ---------------------------------------------------------------- data
function thumbUrl(path) { return `/api/datasets/${state.current}/thumb?${q({ path })}`; }

function openViewer(src, caption, heatmap = null) {
  // `heatmap`: where the run's model looks in this image (an overlay), behind the "Where?" button
  $("viewer-img").src = src;
  $("viewer-caption").textContent = caption;
  const where = $("viewer-where");
  where.hidden = !heatmap;
  where.textContent = "Where?";
  where.onclick = () => {
    const showing = where.textContent === "Image";
    $("viewer-img").src = showing ? src : heatmap;
    where.textContent = showing ? "Where?" : "Image";
  };
  $("viewer").showModal();
}

function imageCard(item, classes, onChange, opts = {}) {
  const fix = item.fix;
  const card = el("div", { class: "thumb" + (fix ? " " + fix.action : ""), "data-path": item.path });
  const img = el("img", { src: thumbUrl(item.path), loading: "lazy", alt: item.path, title: item.path,
                          onclick: () => openViewer(`/api/datasets/${state.current}/image?${q({ path: item.path })}`, item.path) });
  // multi-label: the image's labels as tags, and a label added or removed as the fix
  const caption = item.labels
    ? el("div", {}, ...(item.labels.length ? item.labels.map((c) => el("span", { class: "tag" }, c)) : [el("span", { class: "tag none" }, "no label")]), ` · ${item.split}`)
    : el("div", {}, `${item.label} · ${item.split}`);
  if (fix) caption.append(" ", el("span", { class: "fix " + fix.action }, fixText(fix)));
  const has = item.fixed_labels || [];
  const relabel = item.labels
    ? [el("select", { "aria-label": `add a label to ${item.path}`, onchange: async (e) => {
        if (e.target.value) await decide(item.path, "add-label", e.target.value, "", onChange);
      } }, el("option", { value: "" }, "add label…"), classes.filter((c) => !has.includes(c)).map((c) => el("option", { value: c }, c))),
       el("select", { "aria-label": `remove a label from ${item.path}`, onchange: async (e) => {
        if (e.target.value) await decide(item.path, "remove-label", e.target.value, "", onChange);
      } }, el("option", { value: "" }, "remove label…"), has.map((c) => el("option", { value: c }, c)))]
    : [el("select", { "aria-label": `relabel ${item.path}`, onchange: async (e) => {
        if (e.target.value) await decide(item.path, "relabel", e.target.value, "", onChange);
      } }, el("option", { value: "" }, "relabel…"), classes.filter((c) => c !== item.label).map((c) => el("option", { value: c }, c)))];
  const actions = el("div", { class: "actions" },
    fix && fix.action === "exclude" ? null : el("button", { type: "button", onclick: () => decide(item.path, "exclude", "", "", onChange) }, "Exclude"),
    ...relabel,
    fix ? el("button", { type: "button", onclick: () => decide(item.path, "clear", "", "", onChange) }, "Clear") : null,
    opts.finding && !fix ? el("button", { type: "button", title: "looked at: not an error (kept as it is)",
      onclick: () => decide(item.path, "keep", "", "not an error", onChange) }, "Not an error") : null,
    el("button", { type: "button", title: "more like this", onclick: () => showSimilar(item.path) }, "similar"));
  card.append(img, caption, actions);
  return card;
}

function fixText(fix) {
  return fix.action === "exclude" ? "excluded" : fix.action === "keep" ? "kept: not an error"
    : fix.action === "add-label" ? `+ ${fix.label}` : fix.action === "remove-label" ? `− ${fix.label}` : `→ ${fix.label}`;
}

async function decide(path, action, label, reason, onChange, dataset = state.current) {
  try {
    const out = await api(`/api/datasets/${dataset}/fixes`, { method: "POST", body: { path, action, label, reason, client: state.client } });
    if (dataset === state.current) { state.summary = out.summary; renderSummary(); }
    say(`${{ clear: "cleared", exclude: "excluded", keep: "kept (not an error)", relabel: "relabelled", "add-label": `added ${label} to`, "remove-label": `removed ${label} from` }[action]} ${path}`);
    if (onChange) await onChange();
  } catch (e) { say(e.message, true); }
}

async function loadDataset(id) {
  state.current = id;
  state.version = undefined;  // (set once its summary is drawn)
  state.page = 0;
  say("reading the dataset…");
  state.summary = await api(`/api/datasets/${id}`);
  const fc = $("filter-class");
  fc.replaceChildren(el("option", { value: "" }, "all"), ...state.summary.classes.map((c) => el("option", { value: c }, c)));
  renderSummary();
  await Promise.all([loadImages(), loadFindings(), loadMap()]);
  say(`${state.summary.images} images in ${state.summary.classes.length} classes`);
}

function renderSummary() {
  const s = state.summary;
  $("dataset-path").textContent = s.path;
  const most = Math.max(1, ...Object.values(s.counts).map((c) => c.train + c.val));
  const rows = [el("tr", {}, el("th", {}, "class"), el("th", { class: "num" }, "train"), el("th", { class: "num" }, "val"),
                          el("th", { class: "num" }, "after fixes"), el("th", {}, "balance"))];
  for (const [name, c] of Object.entries(s.counts)) {
    const fixed = c.train_fixed + c.val_fixed;
    rows.push(el("tr", {}, el("td", {}, name), el("td", { class: "num" }, c.train), el("td", { class: "num" }, c.val),
      el("td", { class: "num" }, fixed === c.train + c.val ? "" : `${c.train_fixed} / ${c.val_fixed}`),
      el("td", {}, el("span", { class: "balance", style: `width:${Math.round(160 * (c.train + c.val) / most)}px` }))));
  }
  $("classes").replaceChildren(...rows);
  $("fixes-line").textContent = `${s.fixes.exclude} excluded, ${s.fixes.relabel} relabelled, ${s.fixes.keep || 0} kept · ${s.fixes_file}` +
    (s.unreadable.length ? ` · ${s.unreadable.length} unreadable file(s) left out` : "");
  $("fixes-command").textContent = s.fixes.exclude + s.fixes.relabel ? `transferkit train ${s.path} --fixes ${s.fixes_file}` : "";
  $("undo").disabled = !(s.undo_clients || []).includes(state.client);  // this tab's own changes
  state.version = s.version;
}

async function loadImages() {
  const params = { cls: $("filter-class").value, split: $("filter-split").value, fixed: $("filter-fixed").value,
                   offset: state.page * state.perPage, limit: state.perPage };
  const page = await api(`/api/datasets/${state.current}/images?${q(params)}`);
  const classes = state.summary.classes;
  $("images").replaceChildren(...page.items.map((item) => imageCard(item, classes, loadImages)));
  const last = Math.max(0, Math.ceil(page.total / state.perPage) - 1);
  $("page-line").textContent = page.total ? `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}` : "no images";
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= last;
}

async function loadFindings() {
  const out = await api(`/api/datasets/${state.current}/findings`);
  $("seed").disabled = !out.exclude_list;
  const box = $("findings");
  if (!out.found) { box.replaceChildren(el("p", { class: "muted" }, "The doctor has not looked at this dataset yet.")); return; }
  const groups = Object.entries(out.found.groups);
  if (!groups.length) { box.replaceChildren(el("p", {}, "The doctor found nothing wrong.")); return; }
  const classes = state.summary.classes;
  const scroll = window.scrollY;  // redrawn after a fix: the same groups open, the page where it was
  box.replaceChildren(...groups.map(([kind, items]) => el("details", { open: state.openGroups.has(kind) || null,
    ontoggle: (e) => { e.target.open ? state.openGroups.add(kind) : state.openGroups.delete(kind); } },
    el("summary", {}, `${kind} (${items.length}, ${items.filter((f) => f.images.every((i) => i.fix)).length} decided)`),
    ...items.slice(0, 50).map((f) => el("div", { class: "finding" + (f.images.every((i) => i.fix) ? " decided" : ""), "data-kind": kind },
      ...f.images.filter((i) => i.known).map((i) => imageCard(i, classes, loadFindings, { finding: true })),
      el("div", { class: "muted" }, f.kind, f.similarity !== undefined ? ` · similarity ${num(f.similarity, 3)}` : "",
         f.suggested ? el("div", {}, el("button", { type: "button", onclick: () => decide(f.images[0].path, "relabel", f.suggested, "doctor: likely label error", loadFindings) }, `Relabel as ${f.suggested}`)) : null))),
    items.length > 50 ? el("p", { class: "muted" }, `and ${items.length - 50} more (doctor.json)`) : null)));
  window.scrollTo(0, scroll);
}

// ---------------------------------------------------------------- the map of the features
const PALETTE = ["#2451b3", "#c2410c", "#1e7a3a", "#9333ea", "#b91c1c", "#0e7490", "#a16207", "#be185d", "#4d7c0f", "#475569"];

async function loadMap() {
  const out = await api(`/api/datasets/${state.current}/map`);
  state.map = out.map;
  $("map-note").hidden = !!out.map;
  drawMap();
}

function colourOf(p) {
  const by = $("map-colour").value;
  const key = by === "label" ? p.label : by === "predicted" ? p.predicted : p.finding;
  if (key === null || key === undefined) return "#c5cad3";
  const keys = state.mapKeys;
  if (!keys.has(key)) keys.set(key, PALETTE[keys.size % PALETTE.length]);
  return keys.get(key);
}

function drawMap() {
  const canvas = $("map"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  state.mapKeys = new Map();
  if (!state.map) { $("map-legend").textContent = ""; return; }
  if ($("map-colour").value !== "finding") state.map.classes.forEach((c, i) => state.mapKeys.set(c, PALETTE[i % PALETTE.length]));
  const P = 10, W = canvas.width - 2 * P, H = canvas.height - 2 * P;
  state.mapXY = state.map.points.map((p) => [P + p.x * W, P + (1 - p.y) * H]);
  const r = state.map.points.length > 4000 ? 1.5 : 3;
  // points without a colour first, so the coloured ones are drawn on top
  const order = state.map.points.map((p, i) => i).sort((a, b) => (colourOf(state.map.points[a]) === "#c5cad3" ? 0 : 1) - (colourOf(state.map.points[b]) === "#c5cad3" ? 0 : 1));
  for (const i of order) {
    ctx.fillStyle = colourOf(state.map.points[i]);
    ctx.beginPath(); ctx.arc(state.mapXY[i][0], state.mapXY[i][1], r, 0, 2 * Math.PI); ctx.fill();
  }
  $("map-legend").replaceChildren(...[...state.mapKeys].map(([k, c]) => el("span", {}, el("span", { class: "legend-dot", style: `background:${c}` }), k)));
}

function nearestPoint(event) {
  if (!state.mapXY) return -1;
  const box = $("map").getBoundingClientRect();
  const x = (event.clientX - box.left) * ($("map").width / box.width), y = (event.clientY - box.top) * ($("map").height / box.height);
  let best = -1, bestD = 64;
  state.mapXY.forEach(([px, py], i) => { const d = (px - x) ** 2 + (py - y) ** 2; if (d < bestD) { best = i; bestD = d; } });
  return best;
}

function hoverMap(event) {
  const i = nearestPoint(event), hover = $("map-hover");
  if (i < 0) { hover.hidden = true; return; }
  const p = state.map.points[i];
  hover.src = thumbUrl(p.path);
  hover.alt = p.path;
  hover.title = `${p.path} · ${p.label}${p.predicted && p.predicted !== p.label ? " (looks like " + p.predicted + ")" : ""}`;
  const scale = $("map").getBoundingClientRect().width / $("map").width;
  hover.style.left = `${state.mapXY[i][0] * scale + 12}px`;
  hover.style.top = `${state.mapXY[i][1] * scale + 12}px`;
  hover.hidden = false;
}

async function showSimilar(path) {
  try {
    const items = await api(`/api/datasets/${state.current}/similar?${q({ path })}`);
    $("similar-title").textContent = `More like ${path}`;
    $("similar").replaceChildren(...items.map((item) => imageCard(item, state.summary.classes, () => showSimilar(path))));
  } catch (e) { say(e.message, true); }
}

// ---------------------------------------------------------------- jobs
async function pollJobs() {
  try {
    state.jobs = await api("/api/jobs");
    const running = state.jobs.filter((j) => j.status === "running" || j.status === "queued").length;
    $("jobs-badge").textContent = running ? `(${running})` : "";
    if (!$("view-jobs").hidden) renderJobs();
    for (const j of state.jobs) {  // the status line follows each job: no "queued" left standing
      const before = state.jobStatus.get(j.id);
      if (before !== undefined && before !== j.status) say(`job ${j.id} ${j.status}: ${j.title}`, j.status === "failed");
      state.jobStatus.set(j.id, j.status);
    }
    if (state.current && state.version !== undefined) {  // another tab changed the fixes: read them again
      const { version } = await api(`/api/datasets/${state.current}/version`);
      if (version !== state.version) {
        state.summary = await api(`/api/datasets/${state.current}`); renderSummary(); loadImages(); loadFindings();
      }
    }
    for (const j of state.jobs) {
      if (j.status === "finished" && !state.seenDone?.has(j.id)) {
        (state.seenDone ||= new Set()).add(j.id);
        if (j.kind === "doctor" && state.current) { loadFindings(); loadMap(); }
        if (!$("view-runs").hidden) loadRuns();
      }
    }
  } catch (e) { /* the next poll tries again */ }
}

function renderJobs() {
  const box = $("jobs");
  if (!state.jobs.length) { box.replaceChildren(el("p", { class: "muted" }, "Nothing queued. Start a run from the Train tab.")); return; }
  const drawn = JSON.stringify(state.jobs);
  if (drawn === state.jobsDrawn && box.childElementCount) return;  // nothing new: the page stays as the user left it
  state.jobsDrawn = drawn;
  box.replaceChildren(...[...state.jobs].reverse().map((j) => {
    const p = j.progress;
    const share = j.status === "finished" ? 1 : p.epochs && p.done ? Math.min(1, p.done / p.epochs) : p.fraction || 0;
    const line = p.done ? `epoch ${p.epoch}${p.epochs ? "/" + p.epochs : ""} · train loss ${num(p.train_loss, 3)} · val acc ${pct(p.val_acc)}` +
      (p.images_per_s ? ` · ${p.images_per_s} img/s` : "") + (p.eta_s !== undefined ? ` · ETA ${Math.round(p.eta_s)} s` : "")
      : j.status === "running" ? (p.stage || "starting…") : j.status === "failed" ? (j.log.filter((l) => l.trim()).pop() || "failed") : "";
    const open = state.openLogs.has(j.id) || (j.status === "failed" && !state.openLogs.has(-j.id));
    return el("div", { class: `job ${j.status}`, "data-job": j.id },
      el("div", {}, el("span", { class: "state" }, j.status), " ", j.title,
        j.status === "running" || j.status === "queued" ? el("button", { type: "button", style: "float:right", onclick: async () => {
          await api(`/api/jobs/${j.id}/stop`, { method: "POST" }); pollJobs(); } }, "Stop") : null),
      el("div", { class: "progress" + (j.status === "running" && !share ? " busy" : "") }, el("div", { style: `width:${Math.round(share * 100)}%` })),
      el("div", { class: "muted stage" }, line),
      el("code", { class: "cmd" }, j.command),
      el("details", { open: open || null, ontoggle: (e) => {
        // remembered across redraws (a failed job's output opens by itself until closed)
        if (e.target.open) { state.openLogs.add(j.id); state.openLogs.delete(-j.id); } else { state.openLogs.delete(j.id); state.openLogs.add(-j.id); }
      } }, el("summary", {}, "output"), el("pre", {}, j.log.join("\n"))));
  }));
}

// ---------------------------------------------------------------- train
async function submitTrain(event) {
  event.preventDefault();
  const formEl = event.target;
  const form = new FormData(formEl);
  const options = {};
  for (const node of formEl.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  // the values as typed: the studio reads them as the CLI does and names the field it refuses
  for (const [k, v] of form.entries()) {
    if (["dataset", "strategy", "model"].includes(k) || String(v).trim() === "") continue;
    options[k] = String(v).trim();
  }
  try {
    const job = await api("/api/train", { method: "POST", body: { dataset: form.get("dataset"), strategy: form.get("strategy"), model: form.get("model"), options } });
    $("train-error").textContent = "";
    say(`queued: ${job.command}`);
    await pollJobs();
    showTab("jobs");
  } catch (e) {
    $("train-error").textContent = e.message;
    const field = e.field && formEl.elements[e.field];
    if (field) { field.setAttribute("aria-invalid", "true"); field.focus(); }
  }
}

// ---------------------------------------------------------------- runs
async function loadRuns() {
  const runs = await api("/api/runs");
  const head = el("tr", {}, el("th", {}, ""), ...["run", "data", "backbone", "strategy", "val acc", "bal acc", "mAP", "wall s", "CPU s", "when", "status", ""].map((h) => el("th", {}, h)));
  const rows = runs.slice().reverse().map((r) => el("tr", { "data-run": r.name },
    el("td", {}, el("input", { type: "checkbox", "aria-label": `select ${r.name}`, checked: state.selected.has(r.name) || null, disabled: r.status !== "finished" && r.status !== "interrupted" || null,
      onchange: (e) => { e.target.checked ? state.selected.add(r.name) : state.selected.delete(r.name); $("compare").disabled = state.selected.size !== 2; } })),
    el("td", {}, r.status === "finished" || r.status === "interrupted" ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); showRun(r.name); } }, r.name) : r.name),
    el("td", {}, r.data ? r.data.split("/").pop() : "-"), el("td", {}, r.backbone || "-"),
    el("td", { title: r.parent ? `started from the run ${r.parent} (train --from)` : null }, (r.strategy || "-") + (r.parent ? ` · from ${r.parent.split("/").pop()}` : "")),
    el("td", { class: "num" }, num(r.val_acc)), el("td", { class: "num" }, num(r.balanced_accuracy)),
    el("td", { class: "num", title: "multi-label runs: val mAP (their val acc is the subset accuracy)" }, r.val_map === null || r.val_map === undefined ? "-" : num(r.val_map)),
    el("td", { class: "num" }, r.wall_s === null ? "-" : r.wall_s.toFixed(1)), el("td", { class: "num" }, r.cpu_s === null ? "-" : r.cpu_s.toFixed(1)),
    el("td", {}, r.when ? new Date(r.when * 1000).toLocaleString() : "-"), el("td", {}, r.status + (r.problem ? `: ${r.problem}` : "")),
    el("td", {}, el("button", { type: "button", title: `delete the run folder ${r.path}`, onclick: () => removeRun(r.name) }, "Remove"))));
  $("runs").replaceChildren(head, ...rows);
  $("compare").disabled = state.selected.size !== 2;
}

async function removeRun(name) {
  if (!confirm(`Delete the run ${name} (its model, metrics and report)? Files of yours in its folder are kept.`)) return;
  try {
    const out = await api(`/api/runs/${encodeURIComponent(name)}/remove`, { method: "POST" });
    state.selected.delete(name);
    say(out.removed ? `removed ${name}` : `removed ${name}'s files; kept what is not transferkit's: ${out.left.join(", ")}`);
    loadRuns();
  } catch (e) { say(e.message, true); }
}

function curves(histories, names) {
  const W = 520, H = 220, P = 34;
  const all = histories.flatMap((h) => h.rows);
  if (!all.length) return el("p", { class: "muted" }, "no curves");
  // runs counted in the same unit share the axis; an epoch-trained run beside an L-BFGS head: each
  // spans the width (its own first to last row)
  const sameUnit = histories.every((h) => h.unit === histories[0].unit);
  const span = (rows) => [Math.min(...rows.map((r) => r.step)), Math.max(...rows.map((r) => r.step))];
  const shared = span(all);
  const xOf = (h) => { const [lo, hi] = sameUnit ? shared : span(h.rows); return (s) => P + (W - 2 * P) * (hi === lo ? 0.5 : (s - lo) / (hi - lo)); };
  const y = (v) => H - P - (H - 2 * P) * v;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "curves"); svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "validation accuracy per epoch");
  const colors = ["#2451b3", "#c2410c"];
  const add = (tag, attrs, text) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text) n.textContent = text; svg.append(n); };
  add("line", { x1: P, y1: y(0), x2: W - P, y2: y(0), stroke: "#999" });
  add("line", { x1: P, y1: y(0), x2: P, y2: y(1), stroke: "#999" });
  for (const v of [0, 0.5, 1]) add("text", { x: 2, y: y(v) + 4, "font-size": 10 }, v.toFixed(1));
  add("text", { x: W / 2 - 60, y: H - 6, "font-size": 10 }, sameUnit ? `${histories[0].unit} (val accuracy)` : "progress: epochs / L-BFGS iterations (val accuracy)");
  histories.forEach((h, i) => {
    if (!h.rows.length) return;
    const x = xOf(h);
    add("polyline", { fill: "none", stroke: colors[i], "stroke-width": 2, points: h.rows.map((r) => `${x(r.step)},${y(r.val_acc)}`).join(" ") });
    for (const r of h.rows) add("circle", { cx: x(r.step), cy: y(r.val_acc), r: 3, fill: colors[i] });
  });
  // the legend below the plot, each run's whole name (two names of one prefix stay two names)
  const legend = el("ul", { class: "legend" }, ...names.map((n, i) => el("li", {},
    el("span", { class: "swatch", style: `background:${colors[i]}` }), n)));
  return el("figure", { class: "curves" }, svg, legend);
}

function confusionTable(run, classes, matrix) {
  if (!matrix) return el("p", { class: "muted" }, "no confusion matrix");
  const head = el("tr", {}, el("th", {}, "actual \\ predicted"), ...classes.map((c) => el("th", {}, c)));
  const rows = matrix.map((row, a) => el("tr", {}, el("th", {}, classes[a]), ...row.map((n, p) => el("td", {
    class: "cell", tabindex: 0, "data-actual": classes[a], "data-predicted": classes[p], title: `${classes[a]} → ${classes[p]}: ${n}`,
    style: n ? `background: rgba(36,81,179,${Math.min(0.6, 0.08 + n / Math.max(1, ...row) * 0.5)})` : "",
    onclick: () => showCell(run, classes[a], classes[p], classes), onkeydown: (e) => { if (e.key === "Enter") showCell(run, classes[a], classes[p], classes); } }, n))));
  return el("table", { class: "grid confusion" }, head, ...rows);
}

async function showCell(run, actual, predicted, classes) {
  const out = await api(`/api/runs/${encodeURIComponent(run)}/cell?${q({ actual, predicted })}`);
  const items = out.items;
  const box = $("cell-images");
  box.replaceChildren(el("h3", {}, `${actual} predicted as ${predicted}: ${items.length} image(s)`),
    el("div", { class: "thumbs" }, ...items.slice(0, 120).map((r) => runThumb(run, r, `${r.predicted} ${pct(r.probability)}`, out.dataset, classes))));
  box.scrollIntoView({ block: "nearest" });
}

function runThumb(run, r, caption, dataset = null, classes = []) {
  // an image of a run's validation set; where the run's data is one of the studio's datasets, it
  // can be excluded or relabelled from here too
  const src = `/api/runs/${encodeURIComponent(run)}/thumb?i=${r.i}`;
  const fix = r.fix;
  const card = el("div", { class: "thumb" + (fix ? " " + fix.action : ""), "data-path": r.rel || r.path },
    el("img", { src, loading: "lazy", alt: r.path, title: r.path,
                onclick: () => openViewer(src, r.path, `/api/runs/${encodeURIComponent(run)}/heatmap?i=${r.i}`) }),
    el("div", {}, caption || "", fix ? el("span", { class: "fix " + fix.action }, fix.action === "exclude" ? " excluded" : ` → ${fix.label}`) : null));
  if (dataset && r.rel) {
    const mark = (action, label) => decide(r.rel, action, label, `from run ${run}`, () => {
      r.fix = action === "clear" ? null : { action, label }; card.replaceWith(runThumb(run, r, caption, dataset, classes)); }, dataset);
    card.append(el("div", { class: "actions" },
      fix && fix.action === "exclude" ? null : el("button", { type: "button", onclick: () => mark("exclude", "") }, "Exclude"),
      el("select", { "aria-label": `relabel ${r.rel}`, onchange: (e) => { if (e.target.value) mark("relabel", e.target.value); } },
        el("option", { value: "" }, "relabel…"), classes.map((c) => el("option", { value: c }, c))),
      fix ? el("button", { type: "button", onclick: () => mark("clear", "") }, "Clear") : null));
  }
  return card;
}

async function showRun(name) {
  const v = await api(`/api/runs/${encodeURIComponent(name)}`);
  const r = v.run;
  const multi = v.task === "multilabel";  // multi-label: mAP, no confusion matrix, the images with the largest loss
  const perClass = Object.entries(v.per_class || {}).map(([c, m]) => el("tr", {}, el("td", {}, c), el("td", { class: "num" }, num(m.precision, 3)),
    el("td", { class: "num" }, num(m.recall, 3)), el("td", { class: "num" }, num(m.f1, 3)), el("td", { class: "num" }, m.support)));
  $("run-view").replaceChildren(
    el("h2", {}, r.name),
    el("p", {}, `${multi ? `val mAP ${num(v.map.map_macro)} (micro ${num(v.map.map_micro)}) · subset accuracy` : "val accuracy"} ${num(r.val_acc)} · balanced ${num(r.balanced_accuracy)} · ${r.strategy} · ${r.backbone}${r.parent ? ` · from ${r.parent.split("/").pop()}` : ""} · ${r.wall_s === null ? "-" : r.wall_s.toFixed(1)} s`,
      v.report ? el("span", {}, " · ", el("a", { href: `/api/runs/${encodeURIComponent(name)}/report`, target: "_blank", rel: "noopener" }, "report.html")) : null),
    el("p", {}, el("select", { id: "export-formats", "aria-label": "formats to export" },
        ...[["all", "all formats"], ["onnx", "ONNX"], ["torchscript", "TorchScript"], ["int8", "INT8 ONNX"], ["openvino", "OpenVINO IR"], ["coreml-fp16", "Core ML (fp16)"]].map(([v, t]) => el("option", { value: v }, t))),
      el("button", { type: "button", onclick: async () => {
        try {
          const j = await api(`/api/runs/${encodeURIComponent(name)}/export`, { method: "POST", body: { formats: $("export-formats").value } });
          say(`queued: ${j.command}`); pollJobs();
        } catch (e) { say(e.message, true); }
      } }, "Export (checked)"),
      v.exported ? el("button", { type: "button", onclick: () => showExport(name) }, "The export's checks") : null,
      el("button", { type: "button", id: "serve-run", onclick: () => toggleServe(name) }, "Serve"), " ", el("span", { id: "serve-line" }), " ",
      multi ? null : el("button", { type: "button", id: "label-next", title: "rank a folder of unlabelled images by what labelling them would teach this model", onclick: () => label.openFor(name) }, "Label next…")),
    el("div", { id: "export-table" }),
    curves([v.history], [r.name]),
    multi ? null : el("h3", {}, "Confusion matrix (click a cell for its images)"),
    multi ? null : confusionTable(name, v.classes, v.confusion),
    el("div", { id: "cell-images" }),
    el("h3", {}, "Per class"),
    el("table", { class: "grid" }, el("tr", {}, ...["class", "precision", "recall", "F1", "support"].map((h) => el("th", {}, h))), ...perClass),
    el("h3", {}, multi ? "Largest loss (labels wrong or unsure)" : "Most confidently wrong"),
    v.top_losses.length ? el("div", { class: "thumbs" }, ...v.top_losses.map((t) => runThumb(name, t, multi
      ? `${t.actual || "(none)"} → ${t.predicted || "(none)"} · loss ${num(t.loss, 2)}${oodText(t)}` : `${t.actual} → ${t.predicted} ${pct(t.probability)}${oodText(t)}`, v.dataset, v.classes)))
      : el("p", { class: "muted" }, "none: every validation image is right"),
    ...trustSection(name, v));
  refreshServe(name);
  if (v.exported) showExport(name);
}

function oodText(r) {
  // an image's out-of-distribution score, and whether predict would call it unknown
  return r.ood_score === undefined ? "" : ` · OOD ${num(r.ood_score, 3)}${r.unknown ? " unknown" : ""}`;
}

function trustSection(name, v) {
  // selective prediction, and the val images least like the training images (highest OOD score)
  const out = [];
  if (v.selective && v.selective.length) {
    out.push(el("h3", {}, "Selective prediction"),
      el("table", { class: "grid", id: "selective" }, el("tr", {}, ...["coverage", "images", "by confidence", "by OOD score"].map((h) => el("th", {}, h))),
        ...v.selective.map((s) => el("tr", {}, el("td", { class: "num" }, pct(s.coverage)), el("td", { class: "num" }, s.images),
          el("td", { class: "num" }, num(s.accuracy_by_confidence)), el("td", { class: "num" }, num(s.accuracy_by_ood))))));
  }
  if (v.ood) {
    const line = v.ood.threshold === null ? "" : ` (above ${num(v.ood.threshold, 3)}: unknown, ${pct(v.ood.rejected_share)} of them)`;
    out.push(el("h3", {}, `Least like the training images${line}`),
      el("div", { class: "thumbs", id: "unusual" }, ...v.unusual.map((t) => runThumb(name, t, `${t.actual} → ${t.predicted} ${pct(t.probability)}${oodText(t)}`, v.dataset, v.classes))));
  }
  return out;
}

async function refreshServe(name) {
  const { url } = await api(`/api/runs/${encodeURIComponent(name)}/serve`);
  $("serve-run").textContent = url ? "Stop serving" : "Serve";
  $("serve-line").replaceChildren(...(url ? ["serving at ", el("a", { href: url, target: "_blank", rel: "noopener" }, url),
    " · ", el("a", { id: "serve-camera", href: url + "#camera", target: "_blank", rel: "noopener",
                     title: "the served page with the camera on: the top labels over the live picture" }, "camera")] : []));
  return url;
}

async function toggleServe(name) {
  try {
    const url = await refreshServe(name);
    say(url ? "stopping the server…" : "starting the server…");
    await api(`/api/runs/${encodeURIComponent(name)}/serve${url ? "/stop" : ""}`, { method: "POST" });
    await refreshServe(name);
    say(url ? "stopped" : "serving");
  } catch (e) { say(e.message, true); }
}

async function showExport(name) {
  const e = await api(`/api/runs/${encodeURIComponent(name)}/export`);
  const rows = [el("tr", {}, ...["artifact", "MB", "top-1 agree", "accuracy", "drop pt", "b1 p50 ms", "passed"].map((h) => el("th", {}, h)))];
  for (const a of e.artifacts || []) rows.push(el("tr", {}, el("td", {}, a.file), el("td", { class: "num" }, num(a.size_mb, 1)), el("td", { class: "num" }, num(a.top1_agreement)),
    el("td", { class: "num" }, num(a.accuracy)), el("td", { class: "num" }, num(a.accuracy_drop_pt, 2)), el("td", { class: "num" }, num(a.latency_ms_p50, 1)), el("td", { title: a.checked === "structure" ? a.note : null }, a.checked === "structure" ? "structure (not runnable here)" : a.passed ? "yes" : "NO")));
  $("export-table").replaceChildren(el("table", { class: "grid" }, ...rows));
}

function delta(a, b, d = 4) {
  if (a === null || b === null || a === undefined || b === undefined) return el("td", { class: "num" }, "-");
  const x = b - a;
  return el("td", { class: "num " + (x > 0 ? "delta-pos" : x < 0 ? "delta-neg" : "") }, (x >= 0 ? "+" : "") + x.toFixed(d));
}

async function compareRuns() {
  const [a, b] = [...state.selected];
  const c = await api(`/api/compare?${q({ a, b })}`);
  const shown = (v) => (v === null || v === undefined ? "-" : String(v));
  const settings = Object.entries(c.settings).map(([k, [va, vb]]) => el("tr", {}, el("td", {}, k), el("td", {}, shown(va)), el("td", {}, shown(vb))));
  const digits = (k) => (k.endsWith("images") ? 0 : k.endsWith(" s") ? 1 : 4);
  const metrics = Object.entries(c.metrics).map(([k, [va, vb]]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(va, digits(k))),
    el("td", { class: "num" }, num(vb, digits(k))), delta(va, vb, digits(k))));
  const perClass = Object.entries(c.per_class).map(([k, m]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(m.f1[0], 3)), el("td", { class: "num" }, num(m.f1[1], 3)), delta(m.f1[0], m.f1[1], 3),
    el("td", { class: "num" }, num(m.recall[0], 3)), el("td", { class: "num" }, num(m.recall[1], 3)), delta(m.recall[0], m.recall[1], 3)));
  $("run-view").replaceChildren(
    el("h2", {}, `${a} vs ${b}`),
    ...c.notes.map((n) => el("p", { class: "error" }, n)),
    el("h3", {}, "Settings that differ"),
    settings.length ? el("table", { class: "grid", id: "compare-settings" }, el("tr", {}, el("th", {}, "option"), el("th", {}, a), el("th", {}, b)), ...settings) : el("p", {}, "the same settings"),
    el("h3", {}, "Metrics"),
    el("table", { class: "grid" }, el("tr", {}, el("th", {}, ""), el("th", {}, a), el("th", {}, b), el("th", {}, "B − A")), ...metrics),
    curves(c.history, [a, b]),
    el("h3", {}, "Per class"),
    el("table", { class: "grid", id: "compare-classes" }, el("tr", {}, ...["class", "F1 A", "F1 B", "Δ", "recall A", "recall B", "Δ"].map((h) => el("th", {}, h))), ...perClass),
    el("h3", {}, "Confusion matrices"),
    el("div", { class: "columns" }, el("div", {}, el("p", {}, a), confusionTable(a, c.classes[0] || [], c.confusion[0])),
      el("div", {}, el("p", {}, b), confusionTable(b, c.classes[1] || [], c.confusion[1]))),
    el("div", { id: "cell-images" }),
    // the images one run gets right and the other wrong: only where both measured the same images
    ...(c.same_val ? [
      el("h3", {}, `A (${a}) right, B (${b}) wrong: ${c.only_a_right.length}`),
      el("div", { class: "thumbs" }, ...c.only_a_right.slice(0, 60).map((r) => runThumb(a, r, compareCaption(r), c.dataset, c.classes[0] || []))),
      el("h3", {}, `B (${b}) right, A (${a}) wrong: ${c.only_b_right.length}`),
      el("div", { class: "thumbs" }, ...c.only_b_right.slice(0, 60).map((r) => runThumb(a, r, compareCaption(r), c.dataset, c.classes[0] || [])))] : []));
}

function compareCaption(r) {
  return `${r.actual}: A ${r.a_predicted} ${pct(r.a_probability)} · B ${r.b_predicted} ${pct(r.b_probability)}`;
}

// ---------------------------------------------------------------- start
async function start() {
  for (const t of TABS) $(`tab-${t}`).addEventListener("click", () => showTab(t));
  label = labelTab({ $, el, api, say, pollJobs, showTab, pct });
  const s = await api("/api/state");
  state.datasets = s.datasets;
  $("runs-dir").textContent = `runs in ${s.runs_dir}`;
  const options = s.datasets.map((d) => el("option", { value: d.id }, d.name));
  $("dataset").replaceChildren(...options);
  $("train-dataset").replaceChildren(...s.datasets.map((d) => el("option", { value: d.id }, d.name)));
  $("train-strategy").replaceChildren(...s.strategies.map((x) => el("option", { value: x.name, title: x.summary }, x.name)));
  $("train-model").replaceChildren(...s.models.map((m) => el("option", { value: m }, m)));
  $("dataset").addEventListener("change", (e) => loadDataset(e.target.value));
  $("open-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const opened = await api("/api/datasets", { method: "POST", body: { path: $("open-path").value } });
      if (!state.datasets.some((d) => d.id === opened.id)) {
        state.datasets.push({ id: opened.id, name: opened.name, path: opened.path });
        for (const select of [$("dataset"), $("train-dataset")]) select.append(el("option", { value: opened.id }, opened.name));
      }
      $("dataset").value = opened.id;
      await loadDataset(opened.id);
    } catch (err) { say(err.message, true); }
  });
  $("refresh").addEventListener("click", async () => { await api(`/api/datasets/${state.current}/refresh`, { method: "POST" }); loadDataset(state.current); });
  for (const id of ["filter-class", "filter-split", "filter-fixed"]) $(id).addEventListener("change", () => { state.page = 0; loadImages(); });
  $("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); loadImages(); });
  $("next").addEventListener("click", () => { state.page += 1; loadImages(); });
  $("undo").addEventListener("click", async () => {
    const out = await api(`/api/datasets/${state.current}/undo`, { method: "POST", body: { client: state.client } });
    state.summary = out.summary; renderSummary(); await Promise.all([loadImages(), loadFindings()]);
    say(out.items.length > 1 ? `undone: ${out.items.length} decisions` : out.item ? `undone: ${out.item.path}` : "nothing to undo");
  });
  $("run-doctor").addEventListener("click", async () => {
    const j = await api(`/api/datasets/${state.current}/doctor`, { method: "POST" });
    say(`queued: ${j.command}`); pollJobs();
  });
  $("seed").addEventListener("click", async () => {
    if (!confirm("Exclude every image on the doctor's list that has no decision yet? One Undo takes them all back.")) return;
    const out = await api(`/api/datasets/${state.current}/seed`, { method: "POST", body: { client: state.client } });
    state.summary = out.summary; renderSummary(); await Promise.all([loadImages(), loadFindings()]);
    say(`${out.added} image(s) excluded from the doctor's list`);
  });
  $("train-form").addEventListener("submit", submitTrain);
  $("map-colour").addEventListener("change", drawMap);
  $("map").addEventListener("mousemove", hoverMap);
  $("map").addEventListener("mouseleave", () => { $("map-hover").hidden = true; });
  $("map").addEventListener("click", (e) => { const i = nearestPoint(e); if (i >= 0) showSimilar(state.map.points[i].path); });
  $("compare").addEventListener("click", compareRuns);
  setInterval(pollJobs, 1000);
  pollJobs();
  if (s.datasets.length) await loadDataset(s.datasets[0].id);
  else { say("no dataset given: start it with `transferkit studio DATA`"); showTab("runs"); }
}

start().catch((e) => say(e.message, true));
