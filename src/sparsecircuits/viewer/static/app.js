// sparsecircuits viewer. Every piece of data (tokens, labels, dataset text) reaches the page
// through textContent or a canvas label, never as HTML markup, so dataset text stays text.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // Show whitespace tokens visibly; the result is still only ever assigned to textContent.
  function visible(token) {
    return String(token).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return Number(x).toExponential(2);
    return Number(x).toFixed(digits === undefined ? 3 : digits);
  }

  async function api(path, init) {
    const response = await fetch(path, init);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || response.statusText);
    return body;
  }

  const state = {
    graph: null, graphId: null, nodesById: new Map(), pinned: new Set(), selected: null,
    hovered: null, dashboards: [], browser: { offset: 0, limit: 25 }, edgeWeights: [],
    dashboardCache: new Map(),
  };

  let cy = null;

  // ------------------------------------------------------------------ node helpers
  function nodeKind(n) {
    switch (n.feature_type) {
      case "embedding": return "embedding";
      case "logit": return "logit";
      case "mlp reconstruction error": return "error";
      default: return "feature";
    }
  }

  // Feature index within its layer: node_id is "{layer}_{feature}_{pos}".
  function featureIndex(n) {
    const parts = String(n.node_id).split("_");
    return parts.length >= 3 ? parseInt(parts[parts.length - 2], 10) : null;
  }

  function layerRank(n) {
    if (n.layer === "E") return 0;
    const value = parseInt(n.layer, 10);
    return Number.isNaN(value) ? 0 : value + 1;
  }

  function logitToken(n) {
    const m = /^Output "(.*)" \(p=([0-9.eE+-]+)\)$/s.exec(n.clerp || "");
    return m ? m[1] : String(n.feature);
  }

  function nodeLabel(n) {
    const kind = nodeKind(n);
    const tokens = (state.graph && state.graph.metadata.prompt_tokens) || [];
    if (kind === "embedding") return visible(tokens[n.ctx_idx] !== undefined ? tokens[n.ctx_idx] : n.clerp);
    if (kind === "logit") return visible(logitToken(n)) + " " + fmt(n.token_prob, 2);
    if (kind === "error") return "err";
    return n.clerp ? n.clerp : "L" + n.layer + "#" + featureIndex(n);
  }

  function nodeTitle(n) {
    const kind = nodeKind(n);
    if (kind === "feature") return "Feature L" + n.layer + " #" + featureIndex(n) + " @ pos " + n.ctx_idx;
    if (kind === "error") return "MLP error L" + n.layer + " @ pos " + n.ctx_idx;
    if (kind === "embedding") return "Token embedding @ pos " + n.ctx_idx;
    return "Output logit";
  }

  const COLORS = { feature: "#f6ad55", error: "#a0aec0", embedding: "#68d391", logit: "#63b3ed" };

  // ------------------------------------------------------------------ graph drawing
  function layout(nodes) {
    const DX = 16, GAP = 28;
    const cells = new Map();
    let maxCtx = 0;
    for (const n of nodes) {
      const key = n.ctx_idx + ":" + layerRank(n);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(n);
      maxCtx = Math.max(maxCtx, n.ctx_idx);
    }
    const widths = new Array(maxCtx + 1).fill(1);
    for (const [key, list] of cells) {
      const ctx = parseInt(key.split(":")[0], 10);
      widths[ctx] = Math.max(widths[ctx], list.length);
    }
    const starts = [];
    let x = 0;
    for (let c = 0; c <= maxCtx; c++) { starts.push(x); x += widths[c] * DX + GAP; }
    // Spread the rows so the drawing roughly matches the pane's aspect ratio.
    const pane = $("cy").getBoundingClientRect();
    const rows = Math.max(1, ...nodes.map(layerRank));
    const DY = Math.max(60, (x * (pane.height || 600) / (pane.width || 900)) / rows);
    const positions = new Map();
    for (const [key, list] of cells) {
      const [ctx, rank] = key.split(":").map((v) => parseInt(v, 10));
      list.sort((a, b) => (a.influence ?? 0) - (b.influence ?? 0));
      const offset = (widths[ctx] - list.length) * DX / 2;
      list.forEach((n, i) => positions.set(n.node_id, { x: starts[ctx] + offset + i * DX, y: -rank * DY }));
    }
    return positions;
  }

  function drawGraph(graph) {
    state.graph = graph;
    state.nodesById = new Map(graph.nodes.map((n) => [n.node_id, n]));
    state.pinned = new Set((graph.qParams && graph.qParams.pinnedIds) || []);
    state.selected = null;
    const positions = layout(graph.nodes);
    const maxW = Math.max(1e-12, ...graph.links.map((l) => Math.abs(l.weight)));
    const elements = [];
    for (const n of graph.nodes) {
      const kind = nodeKind(n);
      elements.push({
        group: "nodes",
        data: { id: n.node_id, label: nodeLabel(n), kind: kind, color: COLORS[kind] },
        position: positions.get(n.node_id),
        classes: state.pinned.has(n.node_id) ? "pinned" : "",
      });
    }
    graph.links.forEach((l, i) => {
      if (!state.nodesById.has(l.source) || !state.nodesById.has(l.target)) return;
      const rel = Math.abs(l.weight) / maxW;
      elements.push({
        group: "edges",
        data: {
          id: "e" + i, source: l.source, target: l.target, weight: l.weight,
          width: 0.4 + 5 * Math.sqrt(rel),
          color: l.weight >= 0 ? "rgba(43,108,176," + (0.25 + 0.75 * rel) + ")" : "rgba(197,48,48," + (0.25 + 0.75 * rel) + ")",
        },
      });
    });
    state.edgeWeights = graph.links.map((l) => Math.abs(l.weight)).sort((a, b) => a - b);
    if (cy) cy.destroy();
    cy = cytoscape({
      container: $("cy"),
      elements: elements,
      layout: { name: "preset" },
      wheelSensitivity: 0.3,
      minZoom: 0.05,
      maxZoom: 6,
      style: [
        { selector: "node", style: {
          "width": 11, "height": 11, "background-color": "data(color)", "label": "data(label)",
          "font-size": 7, "text-valign": "bottom", "text-margin-y": 2, "min-zoomed-font-size": 5,
          "border-width": 1, "border-color": "#555" } },
        { selector: "node[kind = 'error']", style: { "shape": "rectangle" } },
        { selector: "node[kind = 'embedding']", style: { "shape": "round-rectangle", "width": 18, "font-size": 9 } },
        { selector: "node[kind = 'logit']", style: { "shape": "hexagon", "width": 18, "height": 14, "font-size": 9,
          "text-valign": "top", "text-margin-y": -2 } },
        { selector: "node.pinned", style: { "border-width": 3, "border-color": "#d69e2e" } },
        { selector: "node:selected", style: { "border-width": 3, "border-color": "#1a202c" } },
        { selector: "edge", style: { "width": "data(width)", "line-color": "data(color)", "curve-style": "straight",
          "opacity": 0.7 } },
        { selector: ".faded", style: { "opacity": 0.07 } },
        { selector: ".hidden", style: { "display": "none" } },
      ],
    });
    cy.on("tap", "node", (evt) => {
      const id = evt.target.id();
      if (evt.originalEvent && evt.originalEvent.shiftKey) togglePin(id);
      selectNode(id);
    });
    cy.on("mouseover", "node", (evt) => hoverNode(evt.target.id()));
    cy.on("mouseout", "node", () => hoverNode(null));
    cy.on("tap", (evt) => { if (evt.target === cy) selectNode(null); });
    renderPrompt();
    renderPinned();
    applyFilters();
    cy.fit(undefined, 20);
    $("iv-prompt").value = graph.metadata.prompt || "";
    window.viewer.cy = cy;
  }

  function renderPrompt() {
    const box = $("prompt");
    clear(box);
    const tokens = state.graph.metadata.prompt_tokens || [];
    tokens.forEach((t, i) => {
      const span = el("span", visible(t), "tok");
      span.title = "position " + i;
      box.appendChild(span);
    });
  }

  function applyFilters() {
    if (!cy) return;
    const nodeThr = parseFloat($("node-threshold").value);
    const edgePct = parseInt($("edge-threshold").value, 10);
    $("node-threshold-value").textContent = nodeThr.toFixed(2);
    $("edge-threshold-value").textContent = edgePct + "%";
    const weights = state.edgeWeights;
    const edgeThr = weights.length && edgePct > 0 ? weights[Math.min(weights.length - 1, Math.floor(edgePct / 100 * weights.length))] : 0;
    const subgraphOnly = $("subgraph-only").checked && state.pinned.size > 0;
    cy.batch(() => {
      cy.nodes().forEach((node) => {
        const n = state.nodesById.get(node.id());
        const kind = nodeKind(n);
        let hide = false;
        if ((kind === "feature" || kind === "error") && n.influence !== null && n.influence !== undefined && n.influence > nodeThr) hide = true;
        if (subgraphOnly && !state.pinned.has(n.node_id)) hide = true;
        if (state.pinned.has(n.node_id) && !subgraphOnly) hide = false;
        node.toggleClass("hidden", hide);
      });
      cy.edges().forEach((edge) => {
        const hide = Math.abs(edge.data("weight")) < edgeThr || edge.source().hasClass("hidden") || edge.target().hasClass("hidden");
        edge.toggleClass("hidden", hide);
      });
    });
    const shown = cy.nodes().not(".hidden").length;
    const shownEdges = cy.edges().not(".hidden").length;
    $("graph-stats").textContent = shown + "/" + cy.nodes().length + " nodes, " + shownEdges + "/" + cy.edges().length + " edges";
  }

  function hoverNode(id) {
    if (!cy) return;
    state.hovered = id;
    cy.elements().removeClass("faded");
    if (id) {
      const node = cy.getElementById(id);
      const keep = node.closedNeighborhood();
      cy.elements().not(keep).addClass("faded");
      showNode(id);
    } else if (state.selected) {
      showNode(state.selected);
    }
  }

  function selectNode(id) {
    state.selected = id;
    if (cy) {
      cy.nodes().unselect();
      if (id) cy.getElementById(id).select();
    }
    if (id) {
      showNode(id);
      activateTab("node");
    }
  }

  function togglePin(id) {
    if (state.pinned.has(id)) state.pinned.delete(id); else state.pinned.add(id);
    if (cy) cy.getElementById(id).toggleClass("pinned", state.pinned.has(id));
    renderPinned();
    applyFilters();
  }

  function renderPinned() {
    const list = $("pinned-list");
    clear(list);
    for (const id of state.pinned) {
      const n = state.nodesById.get(id);
      if (!n) continue;
      const li = el("li", nodeTitle(n) + " — " + nodeLabel(n));
      li.className = "clickable";
      li.addEventListener("click", () => selectNode(id));
      list.appendChild(li);
    }
  }

  // ------------------------------------------------------------------ node panel
  let showToken = 0;
  function showNode(id) {
    const n = state.nodesById.get(id);
    if (!n) return;
    const token = ++showToken;
    const panel = $("node-panel");
    clear(panel);
    panel.appendChild(el("h3", nodeTitle(n)));
    const tokens = state.graph.metadata.prompt_tokens || [];
    const stats = el("div", null, "stats");
    if (tokens[n.ctx_idx] !== undefined) stats.appendChild(el("span", "token: " + visible(tokens[n.ctx_idx])));
    if (n.activation !== null && n.activation !== undefined) stats.appendChild(el("span", "activation: " + fmt(n.activation)));
    if (n.influence !== null && n.influence !== undefined) stats.appendChild(el("span", "cum. influence: " + fmt(n.influence)));
    if (nodeKind(n) === "logit") stats.appendChild(el("span", "p = " + fmt(n.token_prob)));
    panel.appendChild(stats);
    if (n.clerp) panel.appendChild(el("div", n.clerp, "muted"));
    const pin = el("button", state.pinned.has(id) ? "Unpin" : "Pin");
    pin.type = "button";
    pin.addEventListener("click", () => { togglePin(id); showNode(id); });
    panel.appendChild(pin);
    panel.appendChild(edgeList("Strongest inputs", state.graph.links.filter((l) => l.target === id), "source"));
    panel.appendChild(edgeList("Strongest outputs", state.graph.links.filter((l) => l.source === id), "target"));
    if (nodeKind(n) === "feature") {
      const box = el("div");
      box.id = "dashboard";
      panel.appendChild(box);
      const layer = parseInt(n.layer, 10);
      const index = featureIndex(n);
      loadDashboard(layer, index).then((d) => {
        if (token !== showToken) return;
        renderDashboard(box, d);
      }).catch((err) => {
        if (token !== showToken) return;
        box.appendChild(el("p", "No dashboard: " + err.message, "muted"));
      });
    }
  }

  function edgeList(title, links, end) {
    const wrap = el("div");
    wrap.appendChild(el("h4", title));
    const ul = el("ul", null, "edges");
    links.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8).forEach((l) => {
      const other = state.nodesById.get(l[end]);
      if (!other) return;
      const li = el("li", fmt(l.weight) + "  " + nodeTitle(other) + " — " + nodeLabel(other));
      li.addEventListener("click", () => selectNode(other.node_id));
      ul.appendChild(li);
    });
    if (!ul.firstChild) ul.appendChild(el("li", "none", "muted"));
    wrap.appendChild(ul);
    return wrap;
  }

  async function loadDashboard(layer, index) {
    const key = layer + ":" + index;
    if (!state.dashboardCache.has(key)) {
      state.dashboardCache.set(key, api("/api/layers/" + layer + "/features/" + index));
    }
    try {
      return await state.dashboardCache.get(key);
    } catch (err) {
      state.dashboardCache.delete(key);
      throw err;
    }
  }

  // ------------------------------------------------------------------ dashboards
  function chips(title, tokens, values, cls) {
    const wrap = el("div");
    wrap.appendChild(el("h4", title));
    const box = el("div", null, "chips");
    (tokens || []).forEach((t, i) => {
      const chip = el("span", visible(t), "chip " + cls);
      if (values && values[i] !== undefined) chip.title = fmt(values[i]);
      box.appendChild(chip);
    });
    wrap.appendChild(box);
    return wrap;
  }

  function histogram(h) {
    const wrap = el("div");
    wrap.appendChild(el("h4", "Activation histogram (log scale)"));
    const bars = el("div", null, "hist");
    const max = Math.max(1, ...h.counts);
    h.counts.forEach((c, i) => {
      const bar = el("div");
      bar.style.height = (c > 0 ? Math.max(2, 100 * c / max) : 0) + "%";
      bar.title = fmt(h.edges[i]) + "–" + fmt(h.edges[i + 1]) + ": " + c;
      bars.appendChild(bar);
    });
    wrap.appendChild(bars);
    const first = h.counts.findIndex((c) => c > 0);
    const last = h.counts.length - 1 - h.counts.slice().reverse().findIndex((c) => c > 0);
    const axis = el("div", null, "hist-axis");
    axis.appendChild(el("span", fmt(h.edges[0])));
    if (first >= 0) axis.appendChild(el("span", "range " + fmt(h.edges[first]) + "–" + fmt(h.edges[last + 1])));
    axis.appendChild(el("span", fmt(h.edges[h.edges.length - 1])));
    wrap.appendChild(axis);
    return wrap;
  }

  function example(ex, maxAct) {
    const row = el("div", null, "example");
    ex.tokens.forEach((t, i) => {
      const span = el("span", visible(t), "t");
      const a = ex.tokens_acts_list[i] || 0;
      if (a !== 0) span.style.backgroundColor = "rgba(237,137,54," + Math.min(1, Math.abs(a) / (maxAct || 1)).toFixed(3) + ")";
      span.title = fmt(a);
      if (i === ex.train_token_ind) span.classList.add("centre");
      row.appendChild(span);
    });
    row.appendChild(el("span", fmt(ex.activation), "act"));
    return row;
  }

  function renderDashboard(box, d) {
    clear(box);
    box.appendChild(el("h3", d.dictionary + " · feature " + d.index));
    const stats = el("div", null, "stats");
    stats.appendChild(el("span", "density " + fmt(100 * d.activation_frequency, 3) + "%"));
    stats.appendChild(el("span", "max " + fmt(d.act_max)));
    stats.appendChild(el("span", "mean active " + fmt(d.mean_active_activation)));
    box.appendChild(stats);
    if (d.histogram) box.appendChild(histogram(d.histogram));
    if (d.top_logits && d.top_logits.length) box.appendChild(chips("Top output logits", d.top_logits, d.top_logit_values, "pos"));
    if (d.bottom_logits && d.bottom_logits.length) box.appendChild(chips("Bottom output logits", d.bottom_logits, d.bottom_logit_values, "neg"));
    if (d.deembeddings && d.deembeddings.length) box.appendChild(chips("De-embeddings", d.deembeddings, d.deembedding_values, "emb"));
    for (const group of d.examples_quantiles || []) {
      if (!group.examples.length) continue;
      box.appendChild(el("h4", group.quantile_name));
      group.examples.forEach((ex) => box.appendChild(example(ex, d.act_max)));
    }
    if (!d.fire_count) box.appendChild(el("p", "This feature never fired on the dashboard dataset.", "muted"));
  }

  // ------------------------------------------------------------------ feature browser
  async function loadBrowser() {
    const name = $("browser-dict").value;
    if (!name) return;
    const params = new URLSearchParams({
      offset: String(state.browser.offset), limit: String(state.browser.limit),
      sort: $("browser-sort").value, q: $("browser-query").value,
    });
    const page = await api("/api/dashboards/" + encodeURIComponent(name) + "/features?" + params.toString());
    const body = $("browser-table").tBodies[0];
    clear(body);
    for (const row of page.rows) {
      const tr = el("tr", null, "clickable");
      tr.appendChild(el("td", row.index));
      tr.appendChild(el("td", fmt(100 * row.density, 3) + "%"));
      tr.appendChild(el("td", fmt(row.max_act)));
      tr.appendChild(el("td", visible(row.top_token)));
      tr.appendChild(el("td", row.top_logits.map(visible).join(" · ")));
      tr.addEventListener("click", async () => {
        const box = $("browser-feature");
        clear(box);
        try {
          renderDashboard(box, await api("/api/dashboards/" + encodeURIComponent(name) + "/features/" + row.index));
        } catch (err) {
          box.appendChild(el("p", err.message, "error"));
        }
      });
      body.appendChild(tr);
    }
    const end = Math.min(page.total, state.browser.offset + page.rows.length);
    $("browser-page").textContent = (page.total ? state.browser.offset + 1 : 0) + "–" + end + " of " + page.total;
  }

  // ------------------------------------------------------------------ interventions
  function addInterventionRow(values) {
    const v = Object.assign({ layer: 0, position: 0, feature: 0, mode: "ablate", value: 0 }, values || {});
    const tr = el("tr");
    const cell = (input) => { const td = el("td"); td.appendChild(input); tr.appendChild(td); return input; };
    const num = (name, value, step) => {
      const input = el("input");
      input.type = "number"; input.name = name; input.value = String(value);
      if (step) input.step = step;
      return cell(input);
    };
    num("layer", v.layer); num("position", v.position); num("feature", v.feature);
    const mode = el("select");
    mode.name = "mode";
    for (const m of ["ablate", "scale", "set"]) { const o = el("option", m); o.value = m; mode.appendChild(o); }
    mode.value = v.mode;
    cell(mode);
    num("value", v.value, "any");
    const remove = el("button", "×");
    remove.type = "button";
    remove.addEventListener("click", () => tr.remove());
    cell(remove);
    $("iv-table").tBodies[0].appendChild(tr);
  }

  function readInterventions() {
    return Array.from($("iv-table").tBodies[0].rows).map((tr) => {
      const get = (name) => tr.querySelector("[name=" + name + "]").value;
      return { layer: parseInt(get("layer"), 10), position: parseInt(get("position"), 10),
               feature: parseInt(get("feature"), 10), mode: get("mode"), value: parseFloat(get("value")) || 0 };
    });
  }

  function predictionTable(title, result) {
    const wrap = el("div");
    wrap.appendChild(el("h4", title));
    const table = el("table", null, "table");
    const body = el("tbody");
    for (const p of result.top) {
      const tr = el("tr");
      tr.appendChild(el("td", visible(p.token)));
      tr.appendChild(el("td", fmt(p.prob)));
      body.appendChild(tr);
    }
    table.appendChild(body);
    wrap.appendChild(table);
    wrap.appendChild(el("div", result.continuation, "continuation"));
    return wrap;
  }

  async function runIntervention() {
    const out = $("iv-result");
    $("iv-error").textContent = "";
    clear(out);
    out.appendChild(el("p", "running…", "muted"));
    const request = {
      prompt: $("iv-prompt").value, interventions: readInterventions(),
      n_tokens: parseInt($("iv-ntokens").value, 10) || 0,
      temperature: parseFloat($("iv-temperature").value) || 0,
      seed: parseInt($("iv-seed").value, 10) || 0, top_k: 10,
    };
    try {
      const result = await api("/api/intervene", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      });
      clear(out);
      const grid = el("div", null, "pred-grid");
      grid.appendChild(predictionTable("Baseline", result.baseline));
      grid.appendChild(predictionTable("Intervened", result.intervened));
      grid.id = "iv-predictions";
      out.appendChild(grid);
    } catch (err) {
      clear(out);
      $("iv-error").textContent = err.message;
    }
  }

  // ------------------------------------------------------------------ wiring
  function activateTab(name) {
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === "tab-" + name));
  }

  async function openGraph(id) {
    state.graphId = id;
    $("graph-select").value = id;
    history.replaceState(null, "", "#graph=" + encodeURIComponent(id));
    try {
      drawGraph(await api("/api/graphs/" + id.split("/").map(encodeURIComponent).join("/")));
    } catch (err) {
      $("graph-stats").textContent = "cannot load graph: " + err.message;
    }
  }

  async function init() {
    document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => activateTab(b.dataset.tab)));
    $("node-threshold").addEventListener("input", applyFilters);
    $("edge-threshold").addEventListener("input", applyFilters);
    $("subgraph-only").addEventListener("change", applyFilters);
    $("clear-pins").addEventListener("click", () => {
      state.pinned.clear();
      if (cy) cy.nodes().removeClass("pinned");
      renderPinned(); applyFilters();
    });
    $("fit").addEventListener("click", () => cy && cy.fit(cy.elements().not(".hidden"), 20));
    $("graph-select").addEventListener("change", (e) => openGraph(e.target.value));
    $("browser-go").addEventListener("click", () => { state.browser.offset = 0; loadBrowser(); });
    $("browser-query").addEventListener("keydown", (e) => { if (e.key === "Enter") { state.browser.offset = 0; loadBrowser(); } });
    $("browser-sort").addEventListener("change", () => { state.browser.offset = 0; loadBrowser(); });
    $("browser-dict").addEventListener("change", () => { state.browser.offset = 0; loadBrowser(); });
    $("browser-prev").addEventListener("click", () => { state.browser.offset = Math.max(0, state.browser.offset - state.browser.limit); loadBrowser(); });
    $("browser-next").addEventListener("click", () => { state.browser.offset += state.browser.limit; loadBrowser(); });
    $("iv-add").addEventListener("click", () => addInterventionRow());
    $("iv-add-selected").addEventListener("click", () => {
      const n = state.selected && state.nodesById.get(state.selected);
      if (n && nodeKind(n) === "feature") addInterventionRow({ layer: parseInt(n.layer, 10), position: n.ctx_idx, feature: featureIndex(n) });
    });
    $("iv-run").addEventListener("click", runIntervention);

    try {
      state.dashboards = await api("/api/dashboards");
    } catch (err) {
      state.dashboards = [];
    }
    const dictSelect = $("browser-dict");
    for (const d of state.dashboards) {
      const o = el("option", d.name + (d.layer !== null ? " (layer " + d.layer + ")" : ""));
      o.value = d.name;
      dictSelect.appendChild(o);
    }
    if (state.dashboards.length) loadBrowser().catch(() => {});

    const graphs = await api("/api/graphs");
    const select = $("graph-select");
    for (const g of graphs) {
      const o = el("option", g.slug + " — " + g.prompt.slice(0, 60));
      o.value = g.id;
      select.appendChild(o);
    }
    const wanted = new URLSearchParams(location.hash.slice(1)).get("graph");
    const first = graphs.find((g) => g.id === wanted) || graphs[0];
    if (first) await openGraph(first.id);
    else $("graph-stats").textContent = "no graphs in this folder";
    window.viewer.ready = true;
  }

  window.viewer = { state: state, cy: null, ready: false, selectNode: selectNode, togglePin: togglePin };
  init().catch((err) => { $("graph-stats").textContent = "error: " + err.message; window.viewer.ready = true; });
})();
