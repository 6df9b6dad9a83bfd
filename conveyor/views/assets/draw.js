/* conveyor explorer: drawing. One set of drawing functions paints through a
 * "painter": a canvas painter for the page (fast: thousands of cells redraw in
 * a few ms) and an SVG painter for "Download SVG", so the file is exactly what
 * is on screen. Nothing here knows any schedule: it draws events. */
var ConveyorDraw = (function () {
  "use strict";
  var KINDS = "FBIW";
  var INK = "#1d2330", MUTED = "#4f5868";
  // Idle time: strong red hatching; communication: blue hatching the other way.
  var PATTERNS = {
    bubble: { bg: "#fde3df", line: "#c62f24", angle: 45 },
    comm: { bg: "#dce8f8", line: "#1f5fae", angle: -45 },
    allreduce: { bg: "#d9dbe0", line: "#4a4f5c", angle: 0 },
    w: { bg: null, line: "rgba(29,35,48,0.55)", angle: 45 }
  };

  function hue(mb) { return (mb * 137.508) % 360; }
  function hsl(h, s, l) { return "hsl(" + h.toFixed(1) + "," + s + "%," + l + "%)"; }
  function strong(mb) { return hsl(hue(mb), 62, 47); }
  function tint(mb) { return hsl(hue(mb), 62, 86); }

  // relative luminance of an hsl colour (WCAG), for choosing label colours
  function luminance(h, s, l) {
    s /= 100; l /= 100;
    var a = s * Math.min(l, 1 - l);
    var f = function (n) {
      var k = (n + h / 30) % 12, c = l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(0) + 0.7152 * f(8) + 0.0722 * f(4);
  }
  function contrast(l1, l2) { return (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05); }
  // Black or white, whichever contrasts more with the cell (always >= 4.5:1 here).
  function labelOn(h, s, l) {
    var L = luminance(h, s, l);
    return contrast(L, 0) >= contrast(L, 1) ? "#000" : "#fff";
  }

  // ---- painters ------------------------------------------------------------
  function canvasPainter(canvas, W, H) {
    var dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(W * dpr);
    canvas.height = Math.round(H * dpr);
    canvas.style.width = W + "px";
    canvas.style.height = H + "px";
    var ctx = canvas.getContext("2d"), pats = {};
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    function pattern(name) {
      if (pats[name]) return pats[name];
      var p = PATTERNS[name], c = document.createElement("canvas"), n = Math.round(8 * dpr);
      c.width = c.height = n;
      var g = c.getContext("2d");
      if (p.bg) { g.fillStyle = p.bg; g.fillRect(0, 0, n, n); }
      g.strokeStyle = p.line;
      g.lineWidth = 2.2 * dpr;
      g.beginPath();
      for (var k = -1; k <= 1; k++) {  // diagonals that tile seamlessly
        if (p.angle > 0) { g.moveTo(k * n, n); g.lineTo(k * n + n, 0); }
        else { g.moveTo(k * n, 0); g.lineTo(k * n + n, n); }
      }
      g.stroke();
      pats[name] = ctx.createPattern(c, "repeat");
      pats[name].setTransform && pats[name].setTransform(new DOMMatrix().scale(1 / dpr));
      return pats[name];
    }
    return {
      rect: function (x, y, w, h, o) {
        if (o.fill) { ctx.fillStyle = o.fill; ctx.fillRect(x, y, w, h); }
        if (o.pattern) { ctx.fillStyle = pattern(o.pattern); ctx.fillRect(x, y, w, h); }
        if (o.stroke) {
          ctx.strokeStyle = o.stroke; ctx.lineWidth = 1;
          ctx.setLineDash(o.dash ? [3, 2] : []);
          ctx.strokeRect(x + 0.5, y + 0.5, Math.max(w - 1, 0), Math.max(h - 1, 0));
          ctx.setLineDash([]);
        }
      },
      text: function (x, y, str, o) {
        ctx.fillStyle = o.color || INK;
        ctx.font = (o.bold ? "600 " : "") + (o.size || 11) + "px system-ui, sans-serif";
        ctx.textAlign = o.align || "left";
        ctx.fillText(str, x, y);
      },
      line: function (pts, o) {
        ctx.beginPath();
        pts.forEach(function (p, i) { if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); });
        if (o.fill) { ctx.fillStyle = o.fill; ctx.fill(); }
        if (o.color) { ctx.strokeStyle = o.color; ctx.lineWidth = o.width || 1; ctx.stroke(); }
      },
      dot: function (x, y, r, o) {
        ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI);
        ctx.fillStyle = o.fill; ctx.fill();
        if (o.stroke) { ctx.strokeStyle = o.stroke; ctx.lineWidth = o.width || 1; ctx.stroke(); }
      },
      finish: function () { return canvas; }
    };
  }

  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/"/g, "&quot;"); }
  function f2(x) { return +x.toFixed(2); }

  function svgPainter(W, H, title) {
    var out = [], defs = [];
    Object.keys(PATTERNS).forEach(function (name) {
      var p = PATTERNS[name];
      defs.push('<pattern id="hatch-' + name + '" width="8" height="8" patternUnits="userSpaceOnUse"' +
        ' patternTransform="rotate(' + p.angle + ')">' + (p.bg ? '<rect width="8" height="8" fill="' +
        p.bg + '"/>' : "") + '<rect width="2.6" height="8" fill="' + p.line + '"/></pattern>');
    });
    return {
      rect: function (x, y, w, h, o) {
        var a = ' x="' + f2(x) + '" y="' + f2(y) + '" width="' + f2(w) + '" height="' + f2(h) + '"';
        if (o.fill) out.push("<rect" + a + ' fill="' + o.fill + '"' + (o.cls ? ' class="' + o.cls + '"' : "") + "/>");
        if (o.pattern) out.push("<rect" + a + ' fill="url(#hatch-' + o.pattern + ')"' +
          (o.fill ? "" : ' class="' + (o.cls || o.pattern) + '"') + "/>");
        if (o.stroke) out.push("<rect" + a + ' fill="none" stroke="' + o.stroke + '"' +
          (o.dash ? ' stroke-dasharray="3 2"' : "") + "/>");
      },
      text: function (x, y, str, o) {
        var anchor = { left: "start", center: "middle", right: "end" }[o.align || "left"];
        out.push('<text x="' + f2(x) + '" y="' + f2(y) + '" fill="' + (o.color || INK) + '" font-size="' +
          (o.size || 11) + '"' + (o.bold ? ' font-weight="600"' : "") + ' text-anchor="' + anchor + '">' +
          esc(str) + "</text>");
      },
      line: function (pts, o) {
        out.push('<path d="' + pts.map(function (p, i) { return (i ? "L" : "M") + f2(p[0]) + " " + f2(p[1]); }).join("") +
          (o.fill ? 'Z" fill="' + o.fill + '"' : '" fill="none"') +
          (o.color ? ' stroke="' + o.color + '" stroke-width="' + (o.width || 1) + '"' : "") + "/>");
      },
      dot: function (x, y, r, o) {
        out.push('<circle cx="' + f2(x) + '" cy="' + f2(y) + '" r="' + r + '" fill="' + o.fill + '"' +
          (o.stroke ? ' stroke="' + o.stroke + '" stroke-width="' + (o.width || 1) + '"' : "") + "/>");
      },
      finish: function () {
        return '<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' + H + '" viewBox="0 0 ' +
          W + " " + H + '" font-family="system-ui, sans-serif" role="img" aria-label="' + esc(title) + '">' +
          "<title>" + esc(title) + "</title><defs>" + defs.join("") + '</defs><rect width="' + W +
          '" height="' + H + '" fill="#fff"/>' + out.join("") + "</svg>";
      }
    };
  }

  // ---- charts -------------------------------------------------------------
  function niceStep(span, target) {
    var raw = span / target, p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return steps[i] * p;
    return 10 * p;
  }

  function memRow(P) { return Math.max(7, Math.min(14, Math.floor(rowHeight(P) / 2))); }
  function rowHeight(P) { return P <= 8 ? 28 : Math.max(12, Math.floor(300 / P)); }

  // Height of one Gantt panel (title, rows, memory strip) for P ranks.
  function panelHeight(P, withMemory) {
    return 20 + P * rowHeight(P) + (withMemory ? 8 + P * memRow(P) : 0);
  }

  // One panel: a title line, one lane per rank, and (optional) the activations
  // each rank holds over time. p: painter; g: {model, lay, title, memory};
  // frame: {x, y, width, left, T (time span of the axis), drawn (kinds seen)}.
  function ganttPanel(p, g, frame) {
    var model = g.model, lay = g.lay, P = model.P, byRank = ConveyorReplay.stagesByRank(model.placement, P);
    var v = model.placement.length / P, rowH = rowHeight(P), left = frame.left, drawn = frame.drawn;
    var plotW = frame.width - left - 10, sx = plotW / (frame.T || 1), y0 = frame.y + 20;
    p.text(frame.x + 4, frame.y + 14, g.title, { bold: true, size: 12 });
    var r, pad = rowH > 16 ? 3 : 1, h = rowH - 2 * pad;
    for (r = 0; r < P; r++) {
      var label = v > 1 ? "rank " + r + " (s " + byRank[r].join(",") + ")" : "stage " + byRank[r][0];
      p.text(frame.x + 4, y0 + r * rowH + rowH / 2 + 4, label, { size: rowH < 16 ? 9 : 11, color: INK });
    }
    var x0 = frame.x + left;
    lay.gaps.forEach(function (gp) {
      p.rect(x0 + (gp[1] - lay.t0) * sx, y0 + gp[0] * rowH + pad, (gp[2] - gp[1]) * sx, h,
        { pattern: "bubble", cls: "bubble" });
      drawn.bubble = true;
    });
    model.events.forEach(function (e) {
      var x = x0 + (e.start - lay.t0) * sx, w = Math.max((e.end - e.start) * sx - 1, 0.5);
      var y = y0 + e.r * rowH + pad;
      if (e.k === 5) {  // a data-parallel all-reduce (listed first: compute draws over it)
        p.rect(x, y, w + 1, h, { pattern: "allreduce", cls: "allreduce" }); drawn.allreduce = true; return;
      }
      if (e.k >= 4) { p.rect(x, y, w + 1, h, { pattern: "comm", cls: "comm" }); drawn.comm = true; return; }
      var kind = KINDS[e.k], H = hue(e.mb), light = kind !== "F";
      drawn[kind] = true;
      if (kind === "F") p.rect(x, y, w, h, { fill: strong(e.mb), cls: "cell F" });
      else p.rect(x, y, w, h, { fill: tint(e.mb), stroke: strong(e.mb), dash: kind === "I", cls: "cell " + kind,
        pattern: kind === "W" ? "w" : null });
      if (v > 1) {  // which of the rank's chunks: a dark band on later chunks
        var c = byRank[e.r].indexOf(e.s);
        if (c > 0) { p.rect(x, y, w, 3, { fill: "rgba(29,35,48," + (0.35 + 0.5 * c / (v - 1)).toFixed(2) + ")" }); drawn.chunk = true; }
      }
      if (w >= 15 && h >= 11 && kind !== "W") {
        p.text(x + w / 2, y + h / 2 + 4, String(e.mb), { size: 10, align: "center",
          color: labelOn(H, 62, light ? 86 : 47) });
      }
    });
    var yEnd = y0 + P * rowH;
    if (g.memory) {
      var mem = g.memory, mh = memRow(P), peakAll = 1;
      mem.forEach(function (m) { peakAll = Math.max(peakAll, m.peak); });
      p.text(frame.x + 4, yEnd + 7, "activations held (peak " + peakAll + ")", { size: 9, color: MUTED });
      mem.forEach(function (m, r) {
        var base = yEnd + 8 + (r + 1) * mh, pts = [[x0, base]];
        m.steps.forEach(function (s, i) {
          var x = x0 + Math.max(0, s[0] - lay.t0) * sx, prev = i ? m.steps[i - 1][1] : 0;
          pts.push([x, base - prev / peakAll * (mh - 1)]);
          pts.push([x, base - s[1] / peakAll * (mh - 1)]);
        });
        pts.push([x0 + frame.T * sx, base]);
        p.line(pts, { fill: "rgba(60,80,140,0.45)", color: "#2d3f73", width: 0.8 });
        if (mh >= 10) p.text(frame.x + 4, base - 1, "r" + r + ": " + m.peak, { size: 9, color: MUTED });
      });
      drawn.memory = true;
      yEnd += 8 + P * mh;
    }
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

  // A figure: panels stacked on one time axis. fig: {width, T, scale, unitLabel,
  // panels: [{model, lay, title, memory}]}. Returns {height, drawn}.
  function figureHeight(fig) {
    return fig.panels.reduce(function (h, g) { return h + panelHeight(g.model.P, !!g.memory) + 6; }, 4) + 34;
  }
  function figure(p, fig) {
    var left = fig.panels.some(function (g) { return g.model.placement.length > g.model.P; }) ? 104 : 64;
    if (fig.width < 520) left = Math.min(left, 56);
    var frame = { x: 0, y: 4, width: fig.width, left: left, T: fig.T, drawn: {} };
    fig.panels.forEach(function (g) { frame.y = ganttPanel(p, g, frame) + 6; });
    axis(p, frame, frame.y, fig.scale, fig.unitLabel);
    return frame.drawn;
  }

  // Bubble against M: formula line, simulated points, measured points, marker.
  // c: {width, height, P, formula: [[M, f]], sim: [[M, b]], measured: [[M, b]], mark: [M, b], Mmax}
  function bubbleCurve(p, c) {
    var l = 38, r = 8, t = 16, b = 30, W = c.width - l - r, H = c.height - t - b;
    var lx = function (M) { return l + W * Math.log2(M) / Math.log2(Math.max(2, c.Mmax)); };
    var all = c.sim.concat(c.measured || [], c.formula, [c.mark || [1, 0]]);
    var hi = Math.max(0.05, Math.max.apply(null, all.map(function (q) { return q[1]; })));
    var top = Math.min(1, hi * 1.08) < hi ? hi : Math.min(1, hi * 1.08);
    var ly = function (v) { return t + H * (1 - v / top); };
    p.text(l, 11, "bubble vs M (micro-batches), P = " + c.P, { size: 11, bold: true });
    p.line([[l, t], [l, t + H], [l + W, t + H]], { color: "#8b93a1" });
    [0, top / 2, top].forEach(function (v) {
      p.text(l - 4, ly(v) + 3, (100 * v).toFixed(0) + "%", { size: 9, color: MUTED, align: "right" });
    });
    for (var M = 1; M <= c.Mmax; M *= 4) p.text(lx(M), t + H + 12, String(M), { size: 9, color: MUTED, align: "center" });
    p.text(l + W / 2, t + H + 25, "M, log scale", { size: 9, color: MUTED, align: "center" });
    if (c.formula.length) p.line(c.formula.map(function (q) { return [lx(q[0]), ly(q[1])]; }), { color: "#2b4f8e", width: 1.6 });
    c.sim.forEach(function (q) { p.dot(lx(q[0]), ly(q[1]), 2, { fill: "#b85f00" }); });
    (c.measured || []).forEach(function (q) { p.dot(lx(q[0]), ly(q[1]), 4, { fill: "#b3202a", stroke: "#fff" }); });
    if (c.mark) {
      p.line([[lx(c.mark[0]), t], [lx(c.mark[0]), t + H]], { color: "rgba(29,35,48,0.35)" });
      p.dot(lx(c.mark[0]), ly(c.mark[1]), 5, { fill: "none", stroke: INK, width: 2 });
    }
  }

  // The legend: only what a drawn chart used. drawn: {F, B, I, W, bubble, comm, allreduce, chunk, memory}
  function legendHtml(drawn, extra) {
    var sw = function (inner) { return '<svg width="22" height="14" aria-hidden="true">' + inner + "</svg>"; };
    var box = function (a) { return '<rect x="1" y="1" width="20" height="12" ' + a + "/>"; };
    var hatch = function (name) {
      var q = PATTERNS[name];
      return '<defs><pattern id="lg-' + name + '" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(' +
        q.angle + ')">' + (q.bg ? '<rect width="6" height="6" fill="' + q.bg + '"/>' : '<rect width="6" height="6" fill="' + tint(2) + '"/>') +
        '<rect width="2" height="6" fill="' + q.line + '"/></pattern></defs>' + box('fill="url(#lg-' + name + ')"');
    };
    var items = [];
    if (drawn.F) items.push(sw(box('fill="' + strong(2) + '"')) + "F forward (colour and number: micro-batch)");
    if (drawn.B) items.push(sw(box('fill="' + tint(2) + '" stroke="' + strong(2) + '"')) + "B backward");
    if (drawn.I) items.push(sw(box('fill="' + tint(2) + '" stroke="' + strong(2) + '" stroke-dasharray="3 2"')) + "I input-gradient backward");
    if (drawn.W) items.push(sw(hatch("w")) + "W weight-gradient backward");
    if (drawn.bubble) items.push(sw(hatch("bubble")) + "bubble: the rank is idle");
    if (drawn.comm) items.push(sw(hatch("comm")) + "communication: SEND/RECV (not bubble, not compute)");
    if (drawn.allreduce) items.push(sw(hatch("allreduce")) + "gradient all-reduce over the dp replicas (where the rank does not compute)");
    if (drawn.chunk) items.push(sw(box('fill="' + strong(2) + '"') + '<rect x="1" y="1" width="20" height="3" fill="#1d2330"/>') +
      "dark top band: the rank's later chunk");
    if (drawn.memory) items.push(sw(box('fill="rgba(60,80,140,0.45)" stroke="#2d3f73"')) + "activations held per rank over time");
    (extra || []).forEach(function (x) { items.push(x); });
    return items.map(function (x) { return "<span>" + x + "</span>"; }).join("");
  }

  return { canvasPainter: canvasPainter, svgPainter: svgPainter, figure: figure, figureHeight: figureHeight,
    bubbleCurve: bubbleCurve, legendHtml: legendHtml, labelOn: labelOn, luminance: luminance,
    contrast: contrast, strong: strong, tint: tint, hue: hue };
}());
