// The studio's Label tab (studio/labelling.py): a run's suggestions over a folder of unlabelled
// images, one at a time with the model's guess; a key or a click answers, each answer written to
// the labels table at once; "Retrain from this run" queues `train DATA --from RUN --add TABLE`.
// Every text a user's files can carry goes in as text (el), never as HTML.

export function labelTab({ $, el, api, say, pollJobs, showTab, pct }) {
  const s = { queue: null, at: -1, timer: null };

  const items = () => (s.queue ? s.queue.items : []);
  const open = (item) => !item.answer && !item.skipped;
  const choices = () => [...s.queue.classes, ...s.queue.new_classes];

  function next(from = 0) {  // the next suggestion not answered nor skipped, from `from` on, else from the start
    const list = items();
    const after = list.findIndex((item, i) => i >= from && open(item));
    return after >= 0 ? after : list.findIndex(open);
  }

  async function fillRuns(selected = null) {
    const runs = (await api("/api/runs")).filter((r) => r.status === "finished");
    const keep = selected || $("label-run").value;
    $("label-run").replaceChildren(...runs.slice().reverse().map((r) => el("option", { value: r.name }, r.name)));
    if (keep && runs.some((r) => r.name === keep)) $("label-run").value = keep;
  }

  async function start(event) {
    event.preventDefault();
    try {
      const queue = await api("/api/label", { method: "POST", body: { run: $("label-run").value, folder: $("label-folder").value.trim(), n: $("label-n").value } });
      $("label-error").textContent = "";
      show(queue, false);
      pollJobs();
    } catch (e) { $("label-error").textContent = e.message; }
  }

  async function refresh() {
    if (s.queue) show(await api(`/api/label/${s.queue.id}`).catch(() => s.queue), true);
  }

  function show(queue, keepPlace) {
    const fresh = !s.queue || s.queue.id !== queue.id || s.queue.status !== "ready";
    s.queue = queue;
    if (fresh) {  // the form says which run and folder the queue is of
      $("label-folder").value = queue.folder;
      $("label-n").value = queue.n;
      if ([...$("label-run").options].some((o) => o.value === queue.run)) $("label-run").value = queue.run;
    }
    clearTimeout(s.timer);
    if (queue.status === "suggesting") s.timer = setTimeout(refresh, 1000);
    if (fresh || !keepPlace) s.at = next();
    render();
  }

  async function answer(body) {
    const q = s.queue, i = s.at;
    if (!q || i < 0) return;
    try {
      const out = await api(`/api/label/${q.id}/answer`, { method: "POST", body: { i, ...body } });
      Object.assign(q.items[i], { answer: out.answer, skipped: out.skipped });
      q.labelled = out.labelled;
      if (out.answer && !choices().includes(out.answer)) q.new_classes.push(out.answer);
      s.at = next(i + 1);
      $("label-error").textContent = "";
      render();
    } catch (e) { $("label-error").textContent = e.message; }
  }

  async function retrain() {
    try {
      const job = await api(`/api/label/${s.queue.id}/retrain`, { method: "POST" });
      say(`queued: ${job.command}`);
      await pollJobs();
      showTab("jobs");
    } catch (e) { $("label-error").textContent = e.message; }
  }

  function card(item) {
    const guess = item.guess;
    const newName = el("input", { id: "label-new", size: 16, placeholder: "new class", "aria-label": "a new class's name" });
    return el("div", { id: "label-card", "data-i": item.i },
      el("img", { id: "label-img", src: `/api/label/${s.queue.id}/image?i=${item.i}`, alt: item.shown }),
      el("div", {},
        el("p", {}, el("strong", {}, item.shown)),
        el("p", { id: "label-guess" }, "Its guess: ", el("strong", {}, guess), ` (${pct(item.probability)})`,
          item.answer ? el("span", {}, " · answered ", el("strong", {}, item.answer)) : item.skipped ? " · skipped" : ""),
        el("p", { class: "muted" }, item.reason),
        el("div", { id: "label-classes" }, ...choices().map((c, k) => el("button", { type: "button", class: c === guess ? "guess" : null,
          "data-class": c, onclick: () => answer({ label: c }) }, k < 9 ? el("kbd", {}, String(k + 1)) : null, " ", c))),
        el("p", {},
          el("button", { type: "button", class: "primary", id: "label-accept", disabled: choices().includes(guess) ? null : true,
            onclick: () => answer({ label: guess }) }, "Accept ", el("kbd", {}, "Enter")), " ",
          el("button", { type: "button", id: "label-skip", onclick: () => answer({ skip: true }) }, "Skip ", el("kbd", {}, "S")), " ",
          el("button", { type: "button", id: "label-back", disabled: s.at > 0 ? null : true, onclick: back }, "Back ", el("kbd", {}, "Backspace"))),
        el("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); if (newName.value.trim()) answer({ label: newName.value.trim() }); } },
          newName, el("button", { type: "submit" }, "Add as a new class"))));
  }

  function render() {
    const q = s.queue, box = $("label-queue");
    if (!q) { box.replaceChildren(); return; }
    if (q.status === "suggesting") {
      box.replaceChildren(el("p", { class: "muted", id: "label-state" }, `Ranking the images of ${q.folder} for ${q.run}… (job ${q.job}: the Jobs tab shows its progress)`));
      return;
    }
    if (q.status === "failed") {
      box.replaceChildren(el("p", { class: "error", id: "label-state" }, `suggest failed: ${q.detail || "see its job's output"}`));
      return;
    }
    const list = items();
    const answered = list.filter((x) => x.answer).length, skipped = list.filter((x) => x.skipped).length;
    box.replaceChildren(
      el("p", { id: "label-state" }, `${answered} of ${list.length} suggestion(s) answered · ${skipped} skipped · ${q.labelled} image(s) in the labels table `,
        el("code", {}, q.table), " ",
        el("button", { type: "button", id: "label-retrain", disabled: q.labelled ? null : true, onclick: retrain }, "Retrain from this run")),
      el("p", {}, el("code", { class: "cmd" }, q.command)),
      !list.length ? el("p", { class: "muted" }, "suggest found nothing to label in this folder.")
        : s.at >= 0 ? card(list[s.at]) : el("p", { id: "label-done" }, "Every suggestion is answered or skipped: retrain from this run, or suggest again from the new run."),
      el("div", { id: "label-list", "aria-label": "the suggestions" }, ...list.map((x, i) => el("button", {
        type: "button", class: [x.answer ? "answered" : x.skipped ? "skipped" : "", i === s.at ? "current" : ""].join(" ").trim() || null,
        title: `${x.shown}: ${x.answer || (x.skipped ? "skipped" : "not answered")}`, onclick: () => { s.at = i; render(); } }, String(i + 1)))));
  }

  function back() {
    if (s.at > 0) { s.at -= 1; render(); } else if (s.at < 0 && items().length) { s.at = items().length - 1; render(); }
  }

  function keys(e) {
    if ($("view-label").hidden || !s.queue || s.queue.status !== "ready" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
    const item = items()[s.at];
    if (e.key === "Backspace") { e.preventDefault(); back(); return; }
    if (!item) return;
    if (e.key === "Enter" && choices().includes(item.guess)) { e.preventDefault(); answer({ label: item.guess }); }
    else if (e.key === "s" || e.key === "S") { e.preventDefault(); answer({ skip: true }); }
    else if (/^[1-9]$/.test(e.key) && choices()[Number(e.key) - 1] !== undefined) { e.preventDefault(); answer({ label: choices()[Number(e.key) - 1] }); }
  }

  $("label-form").addEventListener("submit", start);
  document.addEventListener("keydown", keys);
  return {
    async onShow() {
      await fillRuns();
      if (!s.queue) {  // a queue opened before (another tab, a reload): the newest
        const queues = await api("/api/label");
        if (queues.length) show(queues[queues.length - 1], false);
      } else refresh();
    },
    async openFor(run) { showTab("label"); await fillRuns(run); $("label-folder").focus(); },
  };
}
