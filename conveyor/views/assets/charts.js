/* conveyor explorer: the charts, drawn through a painter (draw.js): Gantt
 * panels on one time axis with their memory lanes, the bubble-vs-M curve, and
 * the composed figure that downloads hold (chart, legend and curve on white).
 * Nothing here knows any schedule: it draws events. */
var ConveyorCharts = (function () {
  "use strict";
  var D = ConveyorDraw, KINDS = "FBIW", INK = D.INK, MUTED = D.MUTED, CELL = ["cell F", "cell B", "cell I", "cell W"];

  function niceStep(span, target) {
    var raw = span / target, p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return steps[i] * p;
    return 10 * p;
  }

  // Shapes grouped by style and drawn pass by pass, each pass one kind of
  // shape: a pattern, a fill, a solid or dashed outline, or a label.
  var PASSES = ["p", "p", "f", "p", "s", "d", "f", "t"];
  function Batch() { this.passes = PASSES.map(function () { return new Map(); }); }
  // items are flat: x, y, w, h, class for shapes; x, y, text for labels
  Batch.prototype.add = function (pass, style, a, b, c, d, e) {
    var groups = this.passes[pass], list = groups.get(style);
    if (!list) groups.set(style, list = []);
    if (pass === 7) list.push(a, b, c); else list.push(a, b, c, d, e);
  };
  Batch.prototype.draw = function (p) {
    this.passes.forEach(function (groups, i) {
      var kind = PASSES[i];
      groups.forEach(function (list, style) {
        if (kind === "t") { p.texts(list, { size: 10, align: "center", color: style }); return; }
        p.rects(list, kind === "p" ? { pattern: style } : kind === "f" ? { fill: style } :
          { stroke: style, dash: kind === "d" });
      });
    });
  };

  function rowHeight(P) { return P <= 8 ? 28 : Math.max(12, Math.floor(300 / P)); }
  function memRow(P) { return Math.max(7, Math.min(14, Math.floor(rowHeight(P) / 2))); }
  function panelHeight(P, withMemory) {
    return 20 + P * rowHeight(P) + (withMemory ? 12 + P * memRow(P) : 0);
  }

  // One panel: a title line, one lane per rank, and (optional) the activations
  // each rank holds over time on the figure's one memory scale.
  // g: {model, lay, title, memory, pieces (measured idle: [r, t0, t1, kind, msg]),
  //     highlight: {critical: [events], chain: [events], pick: [r, t0, t1]}}
  // frame: {x, y, width, left, T, drawn, memPeak, geometry, panel}.
  function ganttPanel(p, g, frame) {
    var model = g.model, lay = g.lay, P = model.P, byRank = ConveyorReplay.stagesByRank(model.placement, P);
    var v = model.placement.length / P, rowH = rowHeight(P), left = frame.left, drawn = frame.drawn;
    var plotW = frame.width - left - 10, sx = plotW / (frame.T || 1), y0 = frame.y + 20;
    var x0 = frame.x + left, pad = rowH > 16 ? 3 : 1, h = rowH - 2 * pad;
    var X = function (t) { return x0 + (t - lay.t0) * sx; };
    p.text(frame.x + 4, frame.y + 14, g.title, { bold: true, size: 12 });
    for (var r = 0; r < P; r++) {
      var label = v > 1 ? "rank " + r + " (s " + byRank[r].join(",") + ")" : "stage " + byRank[r][0];
      p.text(frame.x + 4, y0 + r * rowH + rowH / 2 + 4, label, { size: rowH < 16 ? 9 : 11, color: INK });
    }
    // Drawn in passes, each batched by style (one canvas style change per
    // colour, not per cell: at P = 16, M = 64 there are thousands of cells):
    // idle time, all-reduces, fills, W hatching, outlines, chunk bands, labels.
    var batch = new Batch();
    var idle = g.pieces || lay.gaps.map(function (gp) { return [gp[0], gp[1], gp[2], 0, -1]; });
    for (var j = 0; j < idle.length; j++) {
      var gp = idle[j], kind = gp[3] ? "transfer" : "bubble", x = X(gp[1]), w = (gp[2] - gp[1]) * sx;
      batch.add(0, kind, x, y0 + gp[0] * rowH + pad, w, h, kind);
      drawn[kind] = true;
    }
    var events = model.events, labelW = p.measure("s00 F00", 10) + 4, chunkOf = {};
    byRank.forEach(function (st) { st.forEach(function (s, c) { chunkOf[s] = c; }); });
    for (j = 0; j < events.length; j++) {
      var e = events[j], y = y0 + e.r * rowH + pad;
      x = X(e.start); w = Math.max((e.end - e.start) * sx - 1, 0.5);
      if (e.k === 5) {  // a data-parallel all-reduce (compute draws over it)
        batch.add(1, "allreduce", x, y, w + 1, h, "allreduce"); drawn.allreduce = true; continue;
      }
      if (e.k >= 4) continue;  // measured SEND/RECV: their time is in the idle pieces
      kind = KINDS[e.k];
      var fill = kind === "F" ? D.strong(e.mb) : D.tint(e.mb), cls = CELL[e.k];
      drawn[kind] = true;
      batch.add(2, fill, x, y, w, h, cls);
      if (kind === "W") batch.add(3, "w", x, y, w, h, cls);
      else if (kind !== "F" && w >= 4) batch.add(kind === "I" ? 5 : 4, D.edge(e.mb), x, y, w, h, cls);
      var c = v > 1 ? chunkOf[e.s] : 0;
      if (c > 0) {  // which of the rank's chunks: a dark band on later chunks
        batch.add(6, "rgba(29,35,48," + (0.35 + 0.5 * c / (v - 1)).toFixed(2) + ")", x, y, w, 3, null);
        drawn.chunk = true;
      }
      if (h >= 11 && w >= 15) {
        batch.add(7, D.labelOn(fill), x + w / 2, y + h / 2 + 4, w >= labelW ? "s" + e.s + " " + kind + e.mb : String(e.mb));
      }
    }
    batch.draw(p);
    var hl = g.highlight || {};
    var outline = function (list, colour, key) {
      if (!list || !list.length) return;
      drawn[key] = true;
      list.forEach(function (e, i) {
        var x = X(e.start), w = Math.max((e.end - e.start) * sx - 1, 2), y = y0 + e.r * rowH + pad;
        p.rect(x - 1, y - 1, w + 2, h + 2, { stroke: colour, lineWidth: 2.5, cls: key });
        var prev = list[i - 1];
        if (prev && prev.r !== e.r) {  // the data crossing ranks: a line from its end to this start
          p.line([[X(prev.end), y0 + prev.r * rowH + rowH / 2], [x, y0 + e.r * rowH + rowH / 2]],
            { color: colour, width: 2 });
        }
      });
    };
    outline(hl.critical, "#000", "critical");
    outline(hl.chain, "#e0a100", "chain");
    if (hl.pick) {
      p.rect(X(hl.pick[1]) - 1, y0 + hl.pick[0] * rowH + pad - 2, (hl.pick[2] - hl.pick[1]) * sx + 2, h + 4,
        { stroke: "#e0a100", lineWidth: 3 });
    }
    var yEnd = y0 + P * rowH;
    if (g.memory) {
      var mem = g.memory, mh = memRow(P), peakAll = frame.memPeak || 1;
      p.text(frame.x + 4, yEnd + 10, "activations held per rank, micro-batch-equivalents (one scale: top = " +
        +peakAll.toPrecision(4) + ")", { size: 9, color: MUTED });
      mem.forEach(function (m, r) {
        var base = yEnd + 12 + (r + 1) * mh, pts = [[x0, base]];
        m.steps.forEach(function (s, i) {
          var x = x0 + Math.max(0, s[0] - lay.t0) * sx, prev = i ? m.steps[i - 1][1] : 0;
          pts.push([x, base - prev / peakAll * (mh - 1)]);
          pts.push([x, base - s[1] / peakAll * (mh - 1)]);
        });
        pts.push([x0 + frame.T * sx, base]);
        p.line(pts, { fill: "rgba(60,80,140,0.45)", color: "#2d3f73", width: 0.8 });
        if (mh >= 10) p.text(frame.x + 4, base - 1, "r" + r + ": " + +m.peak.toPrecision(4), { size: 9, color: MUTED });
      });
      drawn.memory = true;
      yEnd += 12 + P * mh;
    }
    frame.geometry.push({ x0: x0, y0: y0, rowH: rowH, sx: sx, t0: lay.t0, P: P, panel: frame.panel });
    return yEnd;
  }

  function axis(p, frame, y, scale, unitLabel) {
    var plotW = frame.width - frame.left - 10, sx = plotW / (frame.T || 1), x0 = frame.x + frame.left;
    var span = frame.T * scale, step = niceStep(span, Math.max(3, Math.floor(plotW / 70)));
    p.line([[x0, y], [x0 + plotW, y]], { color: "#8b93a1" });
    for (var t = 0; t <= span + 1e-9; t += step) {
      var x = x0 + (t / scale) * sx;
      p.line([[x, y], [x, y + 4]], { color: "#8b93a1" });
      p.text(x, y + 15, String(+t.toPrecision(6)), { size: 10, color: MUTED, align: "center" });
    }
    p.text(x0, y + 30, "time (" + unitLabel + ")", { size: 10, color: MUTED });
    return y + 34;
  }

  // A figure: panels stacked on one time axis, memory lanes on one scale.
  // fig: {width, T, scale, unitLabel, panels: [{model, lay, title, memory, pieces, highlight}]}.
  function figureHeight(fig) {
    return fig.panels.reduce(function (h, g) { return h + panelHeight(g.model.P, !!g.memory) + 6; }, 4) + 34;
  }
  // Returns {drawn, geometry (per panel: x0, y0, rowH, sx, t0), plotW, memPeak}.
  function figure(p, fig, y) {
    var left = fig.panels.some(function (g) { return g.model.placement.length > g.model.P; }) ? 104 : 64;
    if (fig.width < 520) left = Math.min(left, 56);
    var memPeak = 0;
    fig.panels.forEach(function (g) { (g.memory || []).forEach(function (m) { memPeak = Math.max(memPeak, m.peak); }); });
    var frame = { x: 0, y: (y || 0) + 4, width: fig.width, left: left, T: fig.T, drawn: {}, memPeak: memPeak,
      geometry: [], panel: 0 };
    fig.panels.forEach(function (g, i) { frame.panel = i; frame.y = ganttPanel(p, g, frame) + 6; });
    axis(p, frame, frame.y, fig.scale, fig.unitLabel);
    return { drawn: frame.drawn, geometry: frame.geometry, memPeak: memPeak, plotW: frame.width - left - 10 };
  }

  // Where each cell of a drawn figure is, for clicks, keys and tests (built
  // when asked, not on every redraw): {panel, x, y, w, h, idle or event}.
  function hitList(fig, geometry) {
    var out = [];
    fig.panels.forEach(function (g, i) {
      var geo = geometry[i], X = function (t) { return geo.x0 + (t - geo.t0) * geo.sx; };
      var idle = g.pieces || g.lay.gaps.map(function (gp) { return [gp[0], gp[1], gp[2], 0, -1]; });
      idle.forEach(function (gp) {
        out.push({ panel: i, x: X(gp[1]), y: geo.y0 + gp[0] * geo.rowH, w: Math.max((gp[2] - gp[1]) * geo.sx, 2),
          h: geo.rowH, idle: gp });
      });
      g.model.events.forEach(function (e) {
        if (e.k >= 4) return;
        out.push({ panel: i, x: X(e.start), y: geo.y0 + e.r * geo.rowH, w: Math.max((e.end - e.start) * geo.sx - 1, 2),
          h: geo.rowH, event: e });
      });
    });
    return out;
  }
  // a drawn figure with its cells found on first use
  function drawnFigure(fig, out, extra) {
    var d = Object.assign({ fig: fig, drawn: out.drawn, geometry: out.geometry }, extra || {}), hits = null;
    Object.defineProperty(d, "hits", { get: function () { return hits || (hits = hitList(fig, out.geometry)); } });
    return d;
  }

  // ---- bubble against M -------------------------------------------------------
  var SERIES = ["#2b4f8e", "#b85f00", "#2e7d32"];
  // c: {width, P, Mmax, series: [{name, formula: [[M, f]], points: [[M, b]], measured: [[M, b]], mark: [M, b]}]}
  function curveHeight(c) { return 150 + 16 * curveKey(c).length; }
  function curveKey(c) {
    var key = [];
    c.series.forEach(function (s, i) {
      var col = SERIES[i % SERIES.length];
      if (s.formula.length) key.push(["line", col, s.name + ": closed form", i > 0]);
      if (s.points.length || s.pending) key.push(["dot", col, s.name + ": simulated" + (s.pending ? " (computing…)" : "")]);
      if ((s.measured || []).length) key.push(["measured", col, s.name + ": measured bubble (waiting on a peer)"]);
    });
    if (c.series.some(function (s) { return s.mark; })) key.push(["ring", INK, "the chart above (M = " + c.M + ")"]);
    return key;
  }
  function bubbleCurve(p, c, y) {
    y = y || 0;
    var l = 40, r = 10, t = y + 18, H = 100, W = c.width - l - r, b = t + H;
    var lx = function (M) { return l + W * Math.log2(M) / Math.log2(Math.max(2, c.Mmax)); };
    var hi = 0.05;
    c.series.forEach(function (s) {
      s.formula.concat(s.points, s.measured || [], s.mark ? [s.mark] : []).forEach(function (q) { hi = Math.max(hi, q[1]); });
    });
    var step = niceStep(hi, 4), top = Math.min(1, Math.ceil(hi / step - 1e-9) * step);
    if (top < hi) top = hi;
    var ly = function (v) { return t + H * (1 - v / top); };
    p.text(l, y + 12, "bubble vs M (micro-batches), P = " + c.P, { size: 11, bold: true });
    p.line([[l, t], [l, b], [l + W, b]], { color: "#8b93a1" });
    for (var v = 0; v <= top + 1e-9; v += step) {
      p.line([[l - 3, ly(v)], [l, ly(v)]], { color: "#8b93a1" });
      p.text(l - 5, ly(v) + 3, +(100 * v).toFixed(1) + "%", { size: 9, color: MUTED, align: "right" });
    }
    var every = W < 200 ? 4 : 2;
    for (var M = 1; M <= c.Mmax; M *= every) p.text(lx(M), b + 12, String(M), { size: 9, color: MUTED, align: "center" });
    p.text(l + W / 2, b + 25, "M, log scale", { size: 9, color: MUTED, align: "center" });
    c.series.forEach(function (s, i) {
      var col = SERIES[i % SERIES.length];
      if (s.formula.length > 1) p.line(s.formula.map(function (q) { return [lx(q[0]), ly(q[1])]; }), { color: col, width: 1.6, dash: i > 0 });
      s.points.forEach(function (q) { p.dot(lx(q[0]), ly(q[1]), 2.2, { fill: col }); });
      (s.measured || []).forEach(function (q) { p.rect(lx(q[0]) - 4, ly(q[1]) - 4, 8, 8, { fill: col, stroke: "#fff" }); });
    });
    if (c.M) p.line([[lx(c.M), t], [lx(c.M), b]], { color: "rgba(29,35,48,0.35)" });
    c.series.forEach(function (s) { if (s.mark) p.dot(lx(s.mark[0]), ly(s.mark[1]), 5, { fill: "none", stroke: INK, width: 2 }); });
    var ky = b + 40;
    curveKey(c).forEach(function (k) {
      if (k[0] === "line") p.line([[l, ky - 4], [l + 18, ky - 4]], { color: k[1], width: 1.6, dash: k[3] });
      else if (k[0] === "dot") p.dot(l + 9, ky - 4, 2.5, { fill: k[1] });
      else if (k[0] === "measured") p.rect(l + 5, ky - 8, 8, 8, { fill: k[1] });
      else p.dot(l + 9, ky - 4, 5, { fill: "none", stroke: k[1], width: 2 });
      p.text(l + 24, ky, k[2], { size: 10, color: INK });
      ky += 16;
    });
    return { top: top, step: step };
  }

  // ---- the composed figure of a download: white, the chart, its legend, the curve
  function legendRows(p, items, width) {
    var rows = [[]], x = 0;
    items.forEach(function (it) {
      var w = 28 + p.measure(it.label, 11) + 16;
      if (x + w > width && rows[rows.length - 1].length) { rows.push([]); x = 0; }
      rows[rows.length - 1].push([it, x]);
      x += w;
    });
    return rows;
  }
  // ex: {fig, legend (items), curve (c or null), summary}; size(p) first gives the height.
  function exportLayout(p, ex) {
    var rows = legendRows(p, ex.legend, ex.fig.width - 8);
    var curveW = Math.min(420, ex.fig.width);
    var h = figureHeight(ex.fig) + 8 + rows.length * 20 + (ex.curve ? 12 + curveHeight(ex.curve) : 0) + 24;
    return { rows: rows, curveW: curveW, height: Math.ceil(h) };
  }
  function exportFigure(p, ex, lay) {
    p.rect(0, 0, ex.fig.width, lay.height, { fill: "#fff" });
    var y = figureHeight(ex.fig) + 4;
    figure(p, ex.fig, 0);
    lay.rows.forEach(function (row) {
      row.forEach(function (cell) { cell[0].swatch(p, 6 + cell[1], y + 2, 20, 12); p.text(6 + cell[1] + 26, y + 12, cell[0].label, { size: 11, color: MUTED }); });
      y += 20;
    });
    if (ex.curve) { bubbleCurve(p, Object.assign({}, ex.curve, { width: lay.curveW }), y + 8); y += 12 + curveHeight(ex.curve); }
    if (ex.summary) p.text(6, y + 14, ex.summary, { size: 10, color: MUTED });
  }

  return { figure: figure, figureHeight: figureHeight, hitList: hitList, drawnFigure: drawnFigure, bubbleCurve: bubbleCurve, curveHeight: curveHeight,
    exportLayout: exportLayout, exportFigure: exportFigure, niceStep: niceStep, rowHeight: rowHeight };
}());
