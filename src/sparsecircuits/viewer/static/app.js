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
    dashboardCache: new Map(), inLinks: new Map(), outLinks: new Map(),
    autoLabels: {}, clerps: {}, supernodes: [], grouping: new Set(), layoutInfo: null,
    scores: null, focus: null, overlayEdges: 0, maxWeight: 1,
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

  // The key labels are stored under: one label per feature, shared by its positions.
  function featureKey(n) {
    return n.layer + "_" + featureIndex(n);
  }

  // Row of a node: embeddings 0, block l at l + 1, logits (layer n_layers + 1) on top.
  function layerRank(n) {
    if (n.layer === "E") return 0;
    const value = parseInt(n.layer, 10);
    return Number.isNaN(value) ? 0 : value + 1;
  }

  function logitToken(n) {
    const m = /^Output "(.*)" \(p=([0-9.eE+-]+)\)$/s.exec(n.clerp || "");
    return m ? m[1] : String(n.feature);
  }

  function promptTokens() {
    return (state.graph && state.graph.metadata.prompt_tokens) || [];
  }

  // A feature's label: the user's edit, else the graph's clerp, else the automatic label.
  function featureLabel(n) {
    const key = featureKey(n);
    if (state.clerps[key]) return state.clerps[key];
    if (n.clerp) return n.clerp;
    if (state.autoLabels[key]) return state.autoLabels[key];
    return "L" + n.layer + "#" + featureIndex(n);
  }

  function nodeLabel(n) {
    const kind = nodeKind(n);
    const tokens = promptTokens();
    if (kind === "embedding") return ""; // the token strip under the column names it
    if (kind === "logit") return visible(logitToken(n)) + " " + fmt(n.token_prob, 2);
    if (kind === "error") return "err";
    return featureLabel(n);
  }

  // A node's text in lists: the label, or the token for an embedding.
  function nodeText(n) {
    const tokens = promptTokens();
    if (nodeKind(n) === "embedding") return visible(tokens[n.ctx_idx] ?? n.clerp ?? "");
    return nodeLabel(n);
  }

  function nodeTitle(n) {
    const kind = nodeKind(n);
    if (kind === "feature") return "Feature L" + n.layer + " #" + featureIndex(n) + " @ pos " + n.ctx_idx;
    if (kind === "error") return "MLP error L" + n.layer + " @ pos " + n.ctx_idx;
    if (kind === "embedding") return "Token embedding @ pos " + n.ctx_idx;
    return "Output logit";
  }

  // The prompt tokens this feature is active on in this graph (one node per position).
  function firesOn(n) {
    const key = featureKey(n);
    const tokens = promptTokens();
    const out = [];
    for (const m of state.graph.nodes) {
      if (nodeKind(m) === "feature" && featureKey(m) === key) out.push(visible(tokens[m.ctx_idx] ?? "?") + "@" + m.ctx_idx);
    }
    return out;
  }

  const COLORS = { feature: "#f6ad55", error: "#a0aec0", embedding: "#68d391", logit: "#63b3ed", supernode: "#f6e05e" };

  // ------------------------------------------------------------------ layout
  // One column per prompt token, one row per layer (embeddings at the bottom, logits on top);
  // the nodes of one (layer, token) cell are packed in a grid inside it, most influential first.
  const CELL = { dx: 30, dy: 26, perRow: 6, colGap: 24, rowGap: 34, minCol: 60 };

  function layout(nodes, nTokens) {
    const cells = new Map();
    let maxRank = 0;
    for (const n of nodes) {
      const rank = layerRank(n);
      maxRank = Math.max(maxRank, rank);
      const key = n.ctx_idx + ":" + rank;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(n);
    }
    const nCols = Math.max(nTokens, 1 + Math.max(0, ...nodes.map((n) => n.ctx_idx)));
    const perCol = new Array(nCols).fill(1);
    const subRows = new Array(maxRank + 1).fill(1);
    for (const [key, list] of cells) {
      const [ctx, rank] = key.split(":").map((v) => parseInt(v, 10));
      perCol[ctx] = Math.max(perCol[ctx], Math.min(list.length, CELL.perRow));
    }
    for (const [key, list] of cells) {
      const [ctx, rank] = key.split(":").map((v) => parseInt(v, 10));
      subRows[rank] = Math.max(subRows[rank], Math.ceil(list.length / perCol[ctx]));
    }
    const columns = [];
    let x = 0;
    for (let c = 0; c < nCols; c++) {
      const width = Math.max(CELL.minCol, perCol[c] * CELL.dx);
      columns.push({ x0: x, x1: x + width });
      x += width + CELL.colGap;
    }
    const rows = [];
    let y = 0; // rows grow upwards: y decreases
    for (let r = 0; r <= maxRank; r++) {
      const height = subRows[r] * CELL.dy;
      rows.push({ y0: y - height, y1: y });
      y -= height + CELL.rowGap;
    }
    const positions = new Map();
    for (const [key, list] of cells) {
      const [ctx, rank] = key.split(":").map((v) => parseInt(v, 10));
      list.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1));
      const per = perCol[ctx];
      const col = columns[ctx], row = rows[rank];
      const used = Math.min(list.length, per);
      const left = (col.x0 + col.x1) / 2 - (used - 1) * CELL.dx / 2;
      list.forEach((n, i) => {
        const cx = left + (i % per) * CELL.dx;
        const cyy = row.y1 - CELL.dy / 2 - Math.floor(i / per) * CELL.dy;
        positions.set(n.node_id, { x: cx, y: cyy });
      });
    }
    return { positions, columns, rows };
  }

  // ------------------------------------------------------------------ graph drawing
  function edgeStyle(weight, maxW) {
    const rel = Math.min(1, Math.abs(weight) / maxW);
    const alpha = (0.3 + 0.7 * rel).toFixed(3);
    return {
      width: 0.5 + 5 * Math.sqrt(rel),
      color: weight >= 0 ? "rgba(43,108,176," + alpha + ")" : "rgba(197,48,48," + alpha + ")",
    };
  }

  // Hide all but about this many strongest edges until the user asks for more.
  const DEFAULT_EDGES = 150;

  function defaultEdgePct(nLinks) {
    if (nLinks <= DEFAULT_EDGES) return 0;
    return Math.min(99, Math.floor(100 * (1 - DEFAULT_EDGES / nLinks)));
  }

  function drawGraph(graph, saved) {
    state.graph = graph;
    state.nodesById = new Map(graph.nodes.map((n) => [n.node_id, n]));
    state.inLinks = new Map();
    state.outLinks = new Map();
    for (const l of graph.links) {
      if (!state.inLinks.has(l.target)) state.inLinks.set(l.target, []);
      if (!state.outLinks.has(l.source)) state.outLinks.set(l.source, []);
      state.inLinks.get(l.target).push(l);
      state.outLinks.get(l.source).push(l);
    }
    const q = graph.qParams || {};
    state.pinned = new Set(saved.pinnedIds || q.pinnedIds || []);
    state.supernodes = (saved.supernodes || q.supernodes || []).filter((g) => Array.isArray(g) && g.length > 1).map((g) => g.slice());
    state.clerps = Object.assign({}, saved.clerps || {});
    state.grouping = new Set();
    state.selected = null;
    state.focus = null;
    $("edge-threshold").value = String(saved.edgeThreshold ?? defaultEdgePct(graph.links.length));
    $("node-threshold").value = String(saved.pruningThreshold ?? 0.8);
    $("subgraph-only").checked = !!saved.subgraphOnly;
    const tokens = promptTokens();
    const { positions, columns, rows } = layout(graph.nodes, tokens.length);
    state.layoutInfo = { columns, rows };
    const maxW = Math.max(1e-12, ...graph.links.map((l) => Math.abs(l.weight)));
    state.maxWeight = maxW;
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
    // the token strip: one label under each column, moving with the graph
    const bottom = rows[0].y1 + 22;
    columns.forEach((c, i) => {
      elements.push({
        group: "nodes", selectable: false, grabbable: false,
        data: { id: "tok:" + i, label: visible(tokens[i] ?? ""), kind: "token-label" },
        position: { x: (c.x0 + c.x1) / 2, y: bottom }, classes: "token-label",
      });
    });
    graph.links.forEach((l, i) => {
      if (!state.nodesById.has(l.source) || !state.nodesById.has(l.target)) return;
      const s = edgeStyle(l.weight, maxW);
      elements.push({
        group: "edges",
        data: { id: "e" + i, source: l.source, target: l.target, weight: l.weight, width: s.width, color: s.color },
      });
    });
    state.edgeWeights = graph.links.map((l) => Math.abs(l.weight)).sort((a, b) => a - b);
    if (cy) cy.destroy();
    const big = graph.nodes.length > 2000; // cheaper node drawing
    cy = cytoscape({
      container: $("cy"),
      elements: elements,
      layout: { name: "preset" },
      wheelSensitivity: 0.3,
      minZoom: 0.02,
      maxZoom: 6,
      // No textureOnViewport: its whole-graph texture is redrawn at each wheel step, which cost a
      // 5,000-node graph 300-500 ms a step with the main thread slowed 6x; the layered per-level
      // caches cost 20-30 ms there.
      hideEdgesOnViewport: graph.links.length > 20000,
      style: [
        { selector: "node", style: {
          "width": 12, "height": 12, "background-color": "data(color)", "label": "data(label)",
          "font-size": 6, "text-valign": "bottom", "text-margin-y": 1, "min-zoomed-font-size": 6,
          "text-wrap": "ellipsis", "text-max-width": CELL.dx - 2, "border-width": big ? 0 : 1, "border-color": "#555" } },
        { selector: "node[kind = 'error']", style: { "shape": "rectangle" } },
        { selector: "node[kind = 'embedding']", style: { "shape": "round-rectangle", "width": 20, "font-size": 8,
          "text-max-width": CELL.minCol } },
        { selector: "node[kind = 'logit']", style: { "shape": "hexagon", "width": 16, "height": 14, "font-size": 8,
          "text-valign": "top", "text-halign": "right", "text-rotation": -0.9, "text-margin-x": -4, "text-margin-y": -2,
          "text-max-width": 120 } },
        { selector: "node.token-label", style: { "width": 1, "height": 1, "background-opacity": 0, "border-width": 0,
          "font-size": 11, "text-valign": "center", "text-max-width": CELL.minCol + CELL.colGap, "events": "no",
          "color": "#222", "font-family": "monospace", "min-zoomed-font-size": 3 } },
        { selector: ":parent", style: { "background-color": "#fefcbf", "background-opacity": 0.35, "border-color": "#b7791f",
          "border-width": 1, "label": "data(label)", "text-valign": "top", "font-size": 10, "font-weight": "bold",
          "text-max-width": 400, "padding": 6, "shape": "round-rectangle" } },
        { selector: "node.collapsed-super", style: { "shape": "round-rectangle", "width": 26, "height": 16,
          "border-color": "#b7791f", "border-width": 2, "font-size": 9, "font-weight": "bold", "text-max-width": 160 } },
        { selector: "node.pinned", style: { "border-width": 3, "border-color": "#d69e2e" } },
        { selector: "node.grouping", style: { "border-width": 3, "border-color": "#805ad5", "border-style": "dashed" } },
        { selector: "node:selected", style: { "border-width": 3, "border-color": "#1a202c" } },
        { selector: "edge", style: { "width": "data(width)", "line-color": "data(color)", "curve-style": "straight",
          "opacity": 0.75 } },
        { selector: ".hidden", style: { "display": "none" } },
        { selector: "node.focus", style: { "border-width": 2, "border-color": "#2d3748" } },
        { selector: "edge.focus", style: { "opacity": 1, "z-index": 10 } },
      ],
    });
    cy.on("tap", "node", (evt) => {
      const id = evt.target.id();
      if (!state.nodesById.has(id)) return;
      const e = evt.originalEvent || {};
      if (e.ctrlKey || e.metaKey || e.altKey) { toggleGrouping(id); return; }
      if (e.shiftKey) togglePin(id);
      selectNode(id);
    });
    cy.on("mouseover", "node", (evt) => hoverNode(evt.target.id()));
    cy.on("mouseout", "node", () => hoverNode(null));
    cy.on("tap", (evt) => { if (evt.target === cy) selectNode(null); });
    cy.on("viewport", () => { if (state.hovered) drawOverlay(); });
    renderPrompt();
    applySupernodes();
    renderPinned();
    applyFilters();
    cy.fit(undefined, 20);
    $("iv-prompt").value = graph.metadata.prompt || "";
    window.viewer.cy = cy;
    if (saved.clickedId && state.nodesById.has(saved.clickedId)) selectNode(saved.clickedId);
  }

  function renderPrompt() {
    const box = $("prompt");
    clear(box);
    promptTokens().forEach((t, i) => {
      const span = el("span", visible(t), "tok");
      span.title = "position " + i;
      box.appendChild(span);
    });
  }

  function refreshLabels() {
    if (!cy) return;
    cy.batch(() => {
      for (const n of state.graph.nodes) {
        if (nodeKind(n) === "feature") cy.getElementById(n.node_id).data("label", nodeLabel(n));
      }
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
    const inSubgraph = subgraphIds();
    const subgraphOnly = $("subgraph-only").checked && inSubgraph.size > 0;
    setFocus(null);
    cy.batch(() => {
      cy.nodes().forEach((node) => {
        const n = state.nodesById.get(node.id());
        if (!n) return; // token labels and supernode boxes
        const kind = nodeKind(n);
        let hide = false;
        if ((kind === "feature" || kind === "error") && n.influence !== null && n.influence !== undefined && n.influence > nodeThr) hide = true;
        if (subgraphOnly && !inSubgraph.has(n.node_id)) hide = true;
        if (inSubgraph.has(n.node_id)) hide = false;
        if (node.hasClass("collapsed")) hide = true;
        node.toggleClass("hidden", hide);
      });
      cy.edges().forEach((edge) => {
        const hide = Math.abs(edge.data("weight")) < edgeThr || edge.source().hasClass("hidden") || edge.target().hasClass("hidden");
        edge.toggleClass("hidden", hide);
      });
    });
    const real = cy.nodes().filter((n) => state.nodesById.has(n.id()));
    const shown = real.not(".hidden").length;
    const shownEdges = cy.edges().not(".hidden").length;
    $("graph-stats").textContent = shown + "/" + real.length + " nodes, " + shownEdges + "/" + cy.edges().length + " edges";
    setFocus(state.selected);
    stateChanged();
  }

  // Every edge of the hovered (else the selected) node is drawn, whatever the thresholds.
  function setFocus(id) {
    if (state.focus) {
      state.focus.all.removeClass("focus");
      state.focus.unhidden.addClass("hidden");
    }
    state.focus = null;
    if (!id || !cy) return;
    const node = cy.getElementById(id);
    if (node.empty()) return;
    const all = node.closedNeighborhood();
    // in the subgraph-only view, only edges between shown nodes
    const onlySubgraph = $("subgraph-only").checked && subgraphIds().size > 0;
    // members of a collapsed supernode stay hidden, and so do their own edges
    const open = (e) => !e.hasClass("collapsed") && (e.isNode() || (!e.source().hasClass("collapsed") && !e.target().hasClass("collapsed")));
    const unhidden = (onlySubgraph
      ? all.edges(".hidden").filter((e) => !e.source().hasClass("hidden") && !e.target().hasClass("hidden"))
      : all.filter(".hidden")).filter(open);
    unhidden.removeClass("hidden");
    all.addClass("focus");
    state.focus = { all, unhidden };
  }

  // Hovering draws the node's edges on an overlay canvas: restyling the graph would redraw every
  // node, which is what makes hover slow on large graphs.
  function drawOverlay() {
    const canvas = $("overlay");
    const box = $("cy").getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(box.width * ratio) || canvas.height !== Math.round(box.height * ratio)) {
      canvas.width = Math.round(box.width * ratio);
      canvas.height = Math.round(box.height * ratio);
      canvas.style.width = box.width + "px";
      canvas.style.height = box.height + "px";
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, box.width, box.height);
    state.overlayEdges = 0;
    const id = state.hovered;
    if (!id || !cy) return;
    const node = cy.getElementById(id);
    if (node.empty()) return;
    const zoom = cy.zoom();
    const ends = new Map();
    node.connectedEdges().forEach((edge) => {
      const a = edge.source().renderedPosition(), b = edge.target().renderedPosition();
      ctx.strokeStyle = edge.data("color");
      ctx.lineWidth = Math.max(1, edge.data("width") * Math.min(1, zoom * 2));
      ctx.beginPath(); ctx.moveTo(a.x, a.y); ctx.lineTo(b.x, b.y); ctx.stroke();
      state.overlayEdges += 1;
      ends.set(edge.source().id(), a); ends.set(edge.target().id(), b);
    });
    ctx.fillStyle = "rgba(26,32,44,0.85)";
    for (const p of ends.values()) { ctx.beginPath(); ctx.arc(p.x, p.y, Math.max(2.5, 6 * zoom), 0, 2 * Math.PI); ctx.fill(); }
  }

  function hoverNode(id) {
    if (!cy) return;
    state.hovered = id;
    drawOverlay();
    if (id) showNode(id, false);
    else if (state.selected) showNode(state.selected, true);
  }

  function selectNode(id) {
    state.selected = id;
    if (cy) {
      cy.nodes().unselect();
      if (id) cy.getElementById(id).select();
    }
    setFocus(id);
    if (id) {
      showNode(id, true);
      activateTab("node");
    }
    stateChanged();
  }

  function togglePin(id) {
    if (state.pinned.has(id)) state.pinned.delete(id); else state.pinned.add(id);
    if (cy) cy.getElementById(id).toggleClass("pinned", state.pinned.has(id));
    renderPinned();
    applyFilters();
  }

  function toggleGrouping(id) {
    if (state.grouping.has(id)) state.grouping.delete(id); else state.grouping.add(id);
    if (cy) cy.getElementById(id).toggleClass("grouping", state.grouping.has(id));
    renderPinned();
  }

  // ------------------------------------------------------------------ subgraph: pins, supernodes, scores
  // Nodes of the subgraph: the pins and every member of a supernode.
  function subgraphIds() {
    const ids = new Set(state.pinned);
    for (const g of state.supernodes) for (const id of g.slice(1)) ids.add(id);
    return ids;
  }

  function groupSelected(name) {
    const ids = Array.from(state.grouping).filter((id) => state.nodesById.has(id));
    if (ids.length < 1) return false;
    const label = String(name || "").trim() || "supernode " + (state.supernodes.length + 1);
    // a node belongs to one supernode at most
    state.supernodes = state.supernodes.map((g) => [g[0], ...g.slice(1).filter((id) => !state.grouping.has(id))]).filter((g) => g.length > 1);
    state.supernodes.push([label, ...ids]);
    for (const id of ids) cy.getElementById(id).removeClass("grouping");
    state.grouping.clear();
    applySupernodes();
    renderPinned();
    applyFilters();
    return true;
  }

  function ungroup(index) {
    state.supernodes.splice(index, 1);
    applySupernodes();
    renderPinned();
    applyFilters();
  }

  // Supernodes are drawn as boxes (compound parents) around their members, which keep their places;
  // collapsed, each is one node at its members' mean position whose edge to any other node (or
  // supernode) carries the sum of its members' edge weights, edges inside a supernode left out.
  function applySupernodes() {
    if (!cy) return;
    const collapse = $("collapse-supernodes").checked;
    cy.batch(() => {
      cy.nodes().filter((n) => n.isChild()).move({ parent: null });
      cy.remove(".supernode, .super-edge");
      cy.nodes(".collapsed").removeClass("collapsed");
      state.supernodes.forEach((g, i) => {
        const pid = "super:" + i;
        const members = cy.collection(g.slice(1).map((id) => cy.getElementById(id)).filter((n) => n.nonempty()));
        const data = { id: pid, label: g[0], kind: "supernode", color: COLORS.supernode };
        if (!collapse) {
          cy.add({ group: "nodes", data: data, classes: "supernode" });
          members.move({ parent: pid });
          return;
        }
        const x = members.map((n) => n.position("x")), y = members.map((n) => n.position("y"));
        const mean = (v) => v.reduce((a, b) => a + b, 0) / Math.max(1, v.length);
        cy.add({ group: "nodes", data: data, position: { x: mean(x), y: mean(y) }, classes: "supernode collapsed-super" });
        members.addClass("collapsed");
      });
      if (collapse) cy.add(supernodeEdges());
    });
  }

  function supernodeEdges() {
    const owner = new Map();
    state.supernodes.forEach((g, i) => { for (const id of g.slice(1)) owner.set(id, "super:" + i); });
    const sums = new Map();
    for (const l of state.graph.links) {
      const source = owner.get(l.source) ?? l.source, target = owner.get(l.target) ?? l.target;
      if (source === target || (source === l.source && target === l.target)) continue;
      if (!cy.getElementById(source).nonempty() || !cy.getElementById(target).nonempty()) continue;
      const key = source + "\u0000" + target;
      sums.set(key, (sums.get(key) || 0) + l.weight);
    }
    return Array.from(sums, ([key, weight]) => {
      const [source, target] = key.split("\u0000");
      const s = edgeStyle(weight, state.maxWeight);
      return { group: "edges", data: { id: "se:" + key, source, target, weight, width: s.width, color: s.color }, classes: "super-edge" };
    });
  }

  function renderPinned() {
    const list = $("pinned-list");
    clear(list);
    for (const id of state.pinned) {
      const n = state.nodesById.get(id);
      if (!n) continue;
      const li = el("li", nodeTitle(n) + " — " + nodeText(n));
      li.className = "clickable";
      li.addEventListener("click", () => selectNode(id));
      list.appendChild(li);
    }
    const groups = $("supernode-list");
    clear(groups);
    state.supernodes.forEach((g, i) => {
      const li = el("li");
      li.appendChild(el("strong", g[0]));
      li.appendChild(el("span", " (" + (g.length - 1) + " nodes) "));
      const b = el("button", "ungroup");
      b.type = "button";
      b.addEventListener("click", () => ungroup(i));
      li.appendChild(b);
      groups.appendChild(li);
    });
    $("grouping-count").textContent = state.grouping.size + " selected";
  }

  function currentState() {
    return {
      pinnedIds: Array.from(state.pinned),
      supernodes: state.supernodes.map((g) => g.slice()),
      clerps: Object.assign({}, state.clerps),
      pruningThreshold: parseFloat($("node-threshold").value),
      edgeThreshold: parseInt($("edge-threshold").value, 10),
      subgraphOnly: $("subgraph-only").checked,
      clickedId: state.selected || "",
    };
  }

  // The URL carries the whole subgraph state (Neuronpedia's qParams names), so a link reopens it.
  function stateToHash(s) {
    const p = new URLSearchParams();
    p.set("graph", state.graphId);
    if (s.pinnedIds.length) p.set("pinnedIds", s.pinnedIds.join(","));
    if (s.supernodes.length) p.set("supernodes", JSON.stringify(s.supernodes));
    if (Object.keys(s.clerps).length) p.set("clerps", JSON.stringify(s.clerps));
    p.set("pruningThreshold", String(s.pruningThreshold));
    p.set("edgeThreshold", String(s.edgeThreshold));
    if (s.subgraphOnly) p.set("subgraphOnly", "1");
    if (s.clickedId) p.set("clickedId", s.clickedId);
    return "#" + p.toString();
  }

  function stateFromHash(hash) {
    const p = new URLSearchParams(hash.replace(/^#/, ""));
    const out = {};
    const json = (key) => { try { return JSON.parse(p.get(key)); } catch (e) { return undefined; } };
    if (p.has("pinnedIds")) out.pinnedIds = p.get("pinnedIds").split(",").filter(Boolean);
    if (p.has("supernodes")) { const v = json("supernodes"); if (Array.isArray(v)) out.supernodes = v.filter((g) => Array.isArray(g) && g.every((x) => typeof x === "string")); }
    if (p.has("clerps")) { const v = json("clerps"); if (v && typeof v === "object" && !Array.isArray(v)) out.clerps = Object.fromEntries(Object.entries(v).filter(([, x]) => typeof x === "string")); }
    if (p.has("pruningThreshold")) out.pruningThreshold = parseFloat(p.get("pruningThreshold"));
    if (p.has("edgeThreshold")) out.edgeThreshold = parseInt(p.get("edgeThreshold"), 10);
    if (p.has("subgraphOnly")) out.subgraphOnly = p.get("subgraphOnly") === "1";
    if (p.has("clickedId")) out.clickedId = p.get("clickedId");
    return out;
  }

  let scoresTimer = null;
  let lastScoredPins = null;
  function stateChanged() {
    if (!state.graph) return;
    const s = currentState();
    history.replaceState(null, "", stateToHash(s));
    const pins = Array.from(subgraphIds()).sort().join(",");
    if (pins !== lastScoredPins) {
      lastScoredPins = pins;
      clearTimeout(scoresTimer);
      scoresTimer = setTimeout(() => loadScores(pins), 150);
    }
  }

  async function loadScores(pins) {
    const gid = state.graphId;
    const query = "/api/scores?graph=" + encodeURIComponent(gid);
    try {
      const whole = await api(query);
      const sub = pins ? await api(query + "&pinned=" + encodeURIComponent(pins)) : null;
      if (gid !== state.graphId) return;
      state.scores = { graph: whole, subgraph: sub };
      const box = $("scores");
      clear(box);
      const line = (name, s) => box.appendChild(el("div", name + ": replacement " + fmt(s.replacement) + " · completeness " + fmt(s.completeness)));
      line("Graph", whole);
      if (sub) line("Subgraph (" + sub.n_features + " features)", sub);
    } catch (err) {
      $("scores").textContent = "scores unavailable: " + err.message;
    }
  }

  async function saveSubgraph() {
    const s = currentState();
    $("save-status").textContent = "saving…";
    try {
      const r = await api("/api/subgraph?graph=" + encodeURIComponent(state.graphId), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(s),
      });
      $("save-status").textContent = "saved to " + r.saved;
      return true;
    } catch (err) {
      $("save-status").textContent = "not saved: " + err.message;
      return false;
    }
  }

  // The export is built by the server from the saved subgraph, so the current state is saved first.
  async function exportNeuronpedia() {
    if (!(await saveSubgraph())) return;
    try {
      const data = await api("/api/export?graph=" + encodeURIComponent(state.graphId));
      const blob = new Blob([JSON.stringify(data)], { type: "application/json" });
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = (data.metadata && data.metadata.slug ? data.metadata.slug : "graph") + ".neuronpedia.json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 0);
      $("save-status").textContent = "exported " + link.download;
    } catch (err) {
      $("save-status").textContent = "not exported: " + err.message;
    }
  }

  // ------------------------------------------------------------------ node panel
  let showToken = 0;
  function showNode(id, full) {
    const n = state.nodesById.get(id);
    if (!n) return;
    const token = ++showToken;
    const panel = $("node-panel");
    clear(panel);
    panel.appendChild(el("h3", nodeTitle(n)));
    const tokens = promptTokens();
    const stats = el("div", null, "stats");
    if (tokens[n.ctx_idx] !== undefined) stats.appendChild(el("span", "token: " + visible(tokens[n.ctx_idx])));
    if (n.activation !== null && n.activation !== undefined) stats.appendChild(el("span", "activation: " + fmt(n.activation)));
    if (n.influence !== null && n.influence !== undefined) stats.appendChild(el("span", "cum. influence: " + fmt(n.influence)));
    if (nodeKind(n) === "logit") stats.appendChild(el("span", "p = " + fmt(n.token_prob)));
    panel.appendChild(stats);
    if (nodeKind(n) === "feature") {
      const label = el("div", featureLabel(n), "node-label");
      label.id = "node-label";
      panel.appendChild(label);
      const auto = state.autoLabels[featureKey(n)];
      if (auto) panel.appendChild(el("div", "automatic: " + auto, "muted"));
      panel.appendChild(el("div", "fires in this prompt on: " + firesOn(n).join(" "), "muted"));
      const row = el("div", null, "row");
      const input = el("input");
      input.id = "label-input";
      input.type = "text";
      input.value = state.clerps[featureKey(n)] || "";
      input.placeholder = "your label";
      const save = el("button", "Set label");
      save.type = "button";
      save.id = "label-save";
      save.addEventListener("click", () => setLabel(n, input.value));
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") setLabel(n, input.value); });
      row.appendChild(input);
      row.appendChild(save);
      panel.appendChild(row);
    } else if (n.clerp) {
      panel.appendChild(el("div", n.clerp, "muted"));
    }
    const pin = el("button", state.pinned.has(id) ? "Unpin" : "Pin");
    pin.type = "button";
    pin.addEventListener("click", () => { togglePin(id); showNode(id, true); });
    panel.appendChild(pin);
    panel.appendChild(edgeList("Strongest inputs", state.inLinks.get(id) || [], "source"));
    panel.appendChild(edgeList("Strongest outputs", state.outLinks.get(id) || [], "target"));
    if (nodeKind(n) === "feature" && full) {
      const box = el("div");
      box.id = "dashboard";
      panel.appendChild(box);
      const layer = parseInt(n.layer, 10);
      const index = featureIndex(n);
      loadDashboard(layer, index).then((d) => {
        if (token !== showToken) return;
        renderDashboard(box, d, featureLabel(n));
      }).catch((err) => {
        if (token !== showToken) return;
        box.appendChild(el("p", "No dashboard: " + err.message, "muted"));
      });
    }
  }

  function setLabel(n, text) {
    const key = featureKey(n);
    const value = String(text).trim();
    if (value) state.clerps[key] = value; else delete state.clerps[key];
    refreshLabels();
    renderPinned();
    showNode(n.node_id, true);
    stateChanged();
    saveSubgraph();
  }

  function edgeList(title, links, end) {
    const wrap = el("div");
    wrap.appendChild(el("h4", title + " (" + links.length + ")"));
    const ul = el("ul", null, "edges");
    links.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8).forEach((l) => {
      const other = state.nodesById.get(l[end]);
      if (!other) return;
      const li = el("li", fmt(l.weight) + "  " + nodeTitle(other) + " — " + nodeText(other));
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

  function renderDashboard(box, d, label) {
    clear(box);
    box.appendChild(el("h3", d.dictionary + " · feature " + d.index));
    if (label) box.appendChild(el("div", label, "node-label dashboard-label"));
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

  async function openGraph(id, hashState) {
    state.graphId = id;
    $("graph-select").value = id;
    const gq = "?graph=" + encodeURIComponent(id);
    try {
      const graph = await api("/api/graphs/" + id.split("/").map(encodeURIComponent).join("/"));
      // the URL's state wins over the saved file, which wins over the graph's own qParams
      let saved = {};
      try { saved = await api("/api/subgraph" + gq); } catch (err) { saved = {}; }
      const fromUrl = hashState || {};
      const merged = Object.assign({}, saved, fromUrl);
      lastScoredPins = null;
      drawGraph(graph, merged);
      api("/api/labels" + gq).then((labels) => {
        if (state.graphId !== id) return;
        state.autoLabels = labels || {};
        refreshLabels();
        renderPinned();
        if (state.selected) showNode(state.selected, true);
        window.viewer.labelsReady = true;
      }).catch(() => { window.viewer.labelsReady = true; });
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
    $("group-selected").addEventListener("click", () => { groupSelected($("supernode-name").value); $("supernode-name").value = ""; });
    $("save-subgraph").addEventListener("click", saveSubgraph);
    $("collapse-supernodes").addEventListener("change", () => { applySupernodes(); applyFilters(); });
    $("export-neuronpedia").addEventListener("click", exportNeuronpedia);
    $("fit").addEventListener("click", () => cy && cy.fit(cy.elements().not(".hidden"), 20));
    $("graph-select").addEventListener("change", (e) => { state.autoLabels = {}; openGraph(e.target.value, {}); });
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
    if (first) await openGraph(first.id, first.id === wanted ? stateFromHash(location.hash) : {});
    else $("graph-stats").textContent = "no graphs in this folder";
    window.viewer.ready = true;
  }

  window.viewer = {
    state: state, cy: null, ready: false, labelsReady: false, selectNode: selectNode, togglePin: togglePin,
    toggleGrouping: toggleGrouping, groupSelected: groupSelected, currentState: currentState,
    hoverNode: hoverNode, saveSubgraph: saveSubgraph,
  };
  init().catch((err) => { $("graph-stats").textContent = "error: " + err.message; window.viewer.ready = true; });
})();
