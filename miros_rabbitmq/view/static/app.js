// miros-rabbitmq view: the live page. No build step, no outside assets.
// State comes from /events (server-sent events): a snapshot, then batches of
// updates ({op: "chart"|"item"|"link", ...}); drawing happens at most once per
// animation frame, whatever the rate of updates.
(function () {
  "use strict";
  const TOKEN = document.body.dataset.token;
  const MODE = document.body.dataset.mode;
  const MAX_ITEMS = 5000;   // items kept in the page
  const MAX_ROWS = 300;     // rows drawn (the newest that pass the filters)
  const MIN_FRAME_MS = 80;  // draw at most ~12 times a second, however fast lines come
  const ROW = 22, TOP = 46, LEFT = 200, COL = 230;
  const url = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + TOKEN;

  let charts = new Map();   // name -> chart
  let items = [];           // in arrival order
  let itemById = new Map();
  let links = new Map();    // id -> link
  let paused = false, pending = [];
  let highlight = null;     // {items: Set, links: Set}
  let recording = false;
  let drawn = [];           // the items on screen
  let frame = 0, chartsDirty = true, lines = 0;
  let fresh = [], delays = [];  // items not drawn yet; seconds from a line's timestamp to its drawing
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;",
    ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

  function apply(updates) {
    for (const u of updates) {
      if (u.op === "chart") { charts.set(u.name, u); chartsDirty = true; }
      else if (u.op === "item") { items.push(u); itemById.set(u.id, u); lines++; fresh.push(u); }
      else if (u.op === "link") { links.set(u.id, u); }
    }
    if (items.length > MAX_ITEMS) {
      const gone = items.splice(0, items.length - MAX_ITEMS);
      for (const it of gone) itemById.delete(it.id);
      for (const [id, l] of links) if (!itemById.has(l.from) && !itemById.has(l.to)) links.delete(id);
    }
    schedule();
  }
  function reset() { charts = new Map(); items = []; itemById = new Map(); links = new Map(); }
  let lastDraw = 0;
  function schedule() {
    if (frame) return;
    const wait = Math.max(0, MIN_FRAME_MS - (performance.now() - lastDraw));
    frame = setTimeout(() => requestAnimationFrame(render), wait);
  }

  // ---------------------------------------------------------------- filters
  function words(id) { return $(id).value.split(",").map((w) => w.trim()).filter(Boolean); }
  function passes(it) {
    const cw = words("f-chart"), sw = words("f-signal");
    if (cw.length && !cw.some((w) => it.c.includes(w))) return false;
    if (sw.length && !sw.some((w) => (it.sig || "").includes(w))) return false;
    return true;
  }
  function visible() {
    const out = [];
    for (let i = items.length - 1; i >= 0 && out.length < MAX_ROWS; i--) {
      if (passes(items[i])) out.push(items[i]);
    }
    return out.reverse();
  }

  // ---------------------------------------------------------------- drawing
  function render() {
    frame = 0;
    lastDraw = performance.now();
    if (chartsDirty) renderCharts();
    renderDiagram();
    if (MODE === "live" && fresh.length) {
      const now = Date.now() / 1000;
      for (const it of fresh) if (it.t) delays.push(now - it.t);
      if (delays.length > 200000) delays.splice(0, delays.length - 100000);
    }
    fresh = [];
    $("status").textContent = `${charts.size} charts · ${lines} lines` +
      (paused ? ` · paused (${pending.length} waiting)` : "") +
      (recording ? ` · recording ${recording}` : "");
  }

  function ago(t) {
    if (!t) return "";
    const now = MODE === "replay" ? Math.max(...[...charts.values()].map((c) => c.last || 0))
                                  : Date.now() / 1000;
    const s = Math.max(0, now - t);
    return s < 1 ? "now" : s < 60 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(1)} min ago`;
  }

  function renderCharts() {
    chartsDirty = false;
    const rows = [];
    for (const c of charts.values()) {
      const when = c.last ? new Date(c.last * 1000).toLocaleTimeString() : "";
      rows.push(`<tr class="${esc(c.status)}" data-chart="${esc(c.name)}">` +
        `<td class="name">${esc(c.name)}</td><td>${esc(c.host || "")}</td>` +
        `<td>${c.pid ? esc(c.pid + " " + (c.program || "")) : ""}</td>` +
        `<td class="state">${esc(c.state || "")}</td>` +
        `<td class="last" title="${esc(when)}">${esc(when)} (${ago(c.last)})</td>` +
        `<td class="status status-${esc(c.status)}">${esc(c.status)}</td></tr>`);
    }
    document.querySelector("#charts tbody").innerHTML = rows.join("");
  }

  function renderDiagram() {
    const rows = visible();
    drawn = rows;
    const cw = words("f-chart");
    const columns = [...charts.keys()].filter((n) => !cw.length || cw.some((w) => n.includes(w)));
    for (const it of rows) if (!columns.includes(it.c)) columns.push(it.c);
    const x = new Map(columns.map((n, i) => [n, LEFT + i * COL]));
    const rowOf = new Map(rows.map((it, i) => [it.id, i]));
    const y = (i) => TOP + (i + 1) * ROW;
    const width = LEFT + columns.length * COL + 80, height = y(rows.length) + ROW;
    const hl = highlight;
    const out = [`<defs><marker id="arr" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
      markerHeight="7" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#2a6fdb"/></marker>
      <marker id="arrh" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7"
      orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#c0392b"/></marker></defs>`];
    out.push(`<rect class="bg" width="${width}" height="${height}" fill="white"/>`);
    for (const n of columns) {
      const cx = x.get(n);
      out.push(`<line class="lifeline" x1="${cx}" y1="${TOP - 6}" x2="${cx}" y2="${height}"/>`);
      out.push(`<g class="head"><rect x="${cx - COL / 2 + 10}" y="6" width="${COL - 20}" height="24" rx="5"/>` +
        `<text x="${cx}" y="22" text-anchor="middle">${esc(n)}</text></g>`);
    }
    rows.forEach((it, i) => {
      const cx = x.get(it.c), cy = y(i);
      const on = hl && hl.items.has(it.id) ? " hl" : (hl ? " dim" : "");
      let body;
      if (it.k === "step") {
        body = `<rect x="${cx - 4}" y="${cy - 8}" width="8" height="14" rx="2"/>` +
          `<text x="${cx + 9}" y="${cy + 3}">${esc(it.sig)}(): ${esc(it.src)}→${esc(it.dst)}</text>`;
      } else if (it.k === "note") {
        body = `<text x="${cx + 9}" y="${cy + 3}"># ${esc(it.text)}</text>`;
      } else {
        body = `<circle cx="${cx}" cy="${cy - 1}" r="4.5"/>` +
          `<text x="${cx + 9}" y="${cy + 3}">${it.k === "tx" ? "⇒" : "⇐"} ${esc(it.sig)}</text>`;
      }
      out.push(`<g class="item k-${it.k}${on}" data-id="${it.id}" data-chart="${esc(it.c)}">` +
        `<text class="time" x="4" y="${cy + 3}">${esc(it.ts)}</text>${body}</g>`);
    });
    for (const l of links.values()) {
      if (!rowOf.has(l.from) || !rowOf.has(l.to)) continue;
      const a = itemById.get(l.from), b = itemById.get(l.to);
      const x1 = x.get(a.c), y1 = y(rowOf.get(l.from)), x2 = x.get(b.c), y2 = y(rowOf.get(l.to));
      if (x1 === x2) continue;
      const on = hl && hl.links.has(l.id);
      const cls = on ? " hl" : (hl ? " dim" : "");
      // rightwards: end at the box's left side; leftwards: on its top, clear of its label
      const dx = x2 > x1 ? -6 : 3, dy = x2 > x1 ? 0 : -9;
      out.push(`<g class="link${cls}" data-link="${esc(l.id)}" data-ev="${esc(l.ev)}">` +
        `<line x1="${x1}" y1="${y1}" x2="${x2 + dx}" y2="${y2 + dy}" marker-end="url(#${on ? "arrh" : "arr"})"/>` +
        `<text x="${(x1 + x2) / 2}" y="${(y1 + y2) / 2 - 4}" text-anchor="middle">${esc(l.sig)}</text></g>`);
    }
    const svg = $("diagram");
    const pane = $("diagram-pane");
    const atBottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 30;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.innerHTML = out.join("");
    if (atBottom && !paused) pane.scrollTop = pane.scrollHeight;
  }

  // ---------------------------------------------------------------- actions
  async function chainOf(id) {
    const r = await fetch(url(`chain?item=${id}`));
    const c = await r.json();
    highlight = {items: new Set(c.items), links: new Set(c.links), events: c.events};
    schedule();
    return c;
  }
  $("diagram").addEventListener("click", (ev) => {
    const g = ev.target.closest(".item");
    if (g) chainOf(Number(g.dataset.id));
    else { highlight = null; schedule(); }
  });
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("pause").classList.toggle("on", paused);
    if (!paused) { const p = pending; pending = []; apply(p); }
    schedule();
  });
  async function exportDiagram(fmt) {
    const r = await fetch(url(`export?fmt=${fmt}`), {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({items: visible().map((it) => it.id)})});  // on screen (or due in the next frame)
    return await r.text();
  }
  function download(text, name, type) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], {type}));
    a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }
  $("export-svg").addEventListener("click", async () =>
    download(await exportDiagram("svg"), "miros-sequence.svg", "image/svg+xml"));
  $("export-mermaid").addEventListener("click", async () =>
    download(await exportDiagram("mermaid"), "miros-sequence.mmd", "text/plain"));
  async function setRecording(on) {
    const r = await fetch(url("record"), {method: "POST", body: JSON.stringify({on})});
    const s = await r.json();
    recording = s.recording ? s.path : false;
    $("record").textContent = s.recording ? "Stop recording" : "Record";
    $("record").classList.toggle("on", !!s.recording);
    if (!s.recording && s.path) $("status").title = "recorded to " + s.path;
    schedule();
    return s;
  }
  $("record").addEventListener("click", () => setRecording(!recording));
  if (MODE === "replay") {
    $("speed-box").hidden = false;
    $("mode").style.background = "#a60";
    $("speed").addEventListener("change", () => fetch(url("speed"), {method: "POST",
      body: JSON.stringify({speed: Number($("speed").value)})}));
  }
  for (const id of ["f-chart", "f-signal"]) $(id).addEventListener("input", () => { chartsDirty = true; schedule(); });
  setInterval(() => { chartsDirty = true; schedule(); }, 1000);

  // ---------------------------------------------------------------- the stream
  const source = new EventSource(url("events"));
  source.addEventListener("snapshot", (ev) => { reset(); apply(JSON.parse(ev.data)); });
  source.addEventListener("batch", (ev) => {
    const updates = JSON.parse(ev.data);
    if (paused) { for (const u of updates) if (u.op === "chart") { charts.set(u.name, u); chartsDirty = true; } else pending.push(u); schedule(); }
    else apply(updates);
  });

  // what tests and benchmarks read (and a console user may)
  window.mirosView = {
    exportDiagram, chainOf, setRecording,
    charts: () => [...charts.values()],
    chartState: (name) => (charts.get(name) || {}).state,
    items: () => items.slice(),
    visibleIds: () => drawn.map((it) => it.id),
    links: () => [...links.values()].map((l) => ({sig: l.sig, from: (itemById.get(l.from) || {}).c,
      to: (itemById.get(l.to) || {}).c, fromKind: (itemById.get(l.from) || {}).k,
      toKind: (itemById.get(l.to) || {}).k})),
    highlighted: () => [...document.querySelectorAll("#diagram .hl")].map((g) =>
      ({id: g.dataset.id, chart: g.dataset.chart, link: g.dataset.link})),
    lines: () => lines,
    delays: (clear) => { const d = delays; if (clear) delays = []; return d; },
  };
})();
