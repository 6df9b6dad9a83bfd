/* conveyor explorer: colours, hatching and the two painters. One set of
 * drawing functions (charts.js) paints through a "painter": a canvas painter
 * for the page (fast: thousands of cells redraw in a few ms) and an SVG
 * painter for "Download SVG", so the file is exactly what is on screen. The
 * legend's swatches are painted by the same code and patterns as the chart.
 *
 * Colours: idle time is dark (the bubble a strong red, a transfer in flight a
 * strong blue, both hatched darker), work is light (a pastel per micro-batch,
 * forwards stronger than backwards, backwards outlined in a mid tone), so every
 * colour drawn in a work cell is at least 3:1 against both bubble colours (a
 * browser test reads the drawn pixels) and labels are black on every cell (at
 * least 4.5:1). */
var ConveyorDraw = (function () {
  "use strict";
  var INK = "#1d2330", MUTED = "#4f5868";
  // Hatching: a background and lines of one direction (angle 45: "/", -45:
  // "\", 0: "|") in an 8-pixel tile, the same geometry on canvas and in SVG.
  var PATTERNS = {
    bubble: { bg: "#b3261c", line: "#6e150e", angle: 45 },
    transfer: { bg: "#1f5fae", line: "#123a6b", angle: -45 },
    allreduce: { bg: "#d9dbe0", line: "#4a4f5c", angle: 0 },
    w: { bg: null, line: "#c4c8d0", angle: 45 }
  };
  var F_LUM = 0.6, B_LUM = 0.8;  // target luminance of forward and backward fills

  function hue(mb) { return (mb * 137.508) % 360; }

  // sRGB [0..1] of hsl(h, s%, l%)
  function hslRgb(h, s, l) {
    s /= 100; l /= 100;
    var a = s * Math.min(l, 1 - l);
    var f = function (n) { var k = (n + h / 30) % 12; return l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
    return [f(0), f(8), f(4)];
  }
  function lin(c) { return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); }
  // relative luminance (WCAG) of an sRGB colour with channels 0..255
  function rgbLuminance(rgb) {
    return 0.2126 * lin(rgb[0] / 255) + 0.7152 * lin(rgb[1] / 255) + 0.0722 * lin(rgb[2] / 255);
  }
  function contrast(l1, l2) { return (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05); }
  function hex(rgb) { return "#" + rgb.map(function (x) { return (256 + x).toString(16).slice(1); }).join(""); }
  function parseHex(h) { return [1, 3, 5].map(function (i) { return parseInt(h.slice(i, i + 2), 16); }); }

  // The lightness at which hue h (saturation 70%) has luminance `target`
  // (bisection; luminance grows with lightness), as a rounded hex colour.
  var cache = {};
  function colourAt(h, target) {
    var key = h.toFixed(3) + "|" + target;
    if (cache[key]) return cache[key];
    var lo = 0, hi = 100, rgb;
    for (var k = 0; k < 30; k++) {
      var mid = (lo + hi) / 2;
      rgb = hslRgb(h, 70, mid).map(function (x) { return Math.round(255 * x); });
      if (rgbLuminance(rgb) < target) lo = mid; else hi = mid;
    }
    rgb = hslRgb(h, 70, hi).map(function (x) { return Math.round(255 * x); });
    return (cache[key] = hex(rgb));
  }
  var byMb = { f: [], b: [], e: [] };  // per micro-batch: computed once
  function strong(mb) { return byMb.f[mb] || (byMb.f[mb] = colourAt(hue(mb), F_LUM)); }  // forward fill
  function tint(mb) { return byMb.b[mb] || (byMb.b[mb] = colourAt(hue(mb), B_LUM)); }    // backward fills
  function edge(mb) { return byMb.e[mb] || (byMb.e[mb] = colourAt(hue(mb), 0.5)); }    // backward outline, 3:1 to the bubble
  // Black or white, whichever contrasts more with the fill.
  var labels = {};
  function labelOn(fill) {
    if (labels[fill]) return labels[fill];
    var L = rgbLuminance(parseHex(fill));
    return (labels[fill] = contrast(L, 0) >= contrast(L, 1) ? "#000" : "#fff");
  }

  // ---- painters ------------------------------------------------------------
  function tilePath(angle) {
    if (angle > 0) return [[-8, 8, 0, 0], [0, 8, 8, 0], [8, 8, 16, 0]];
    if (angle < 0) return [[-8, 0, 0, 8], [0, 0, 8, 8], [8, 0, 16, 8]];
    return [[4, 0, 4, 8]];
  }

  function canvasPainter(canvas, W, H, dprOverride) {
    var dpr = dprOverride || window.devicePixelRatio || 1;
    // Resizing reallocates the canvas: only when the size changes.
    var cw = Math.round(W * dpr), ch = Math.round(H * dpr);
    if (canvas.width !== cw) canvas.width = cw;
    if (canvas.height !== ch) canvas.height = ch;
    if (canvas.style && canvas.style.width !== W + "px") canvas.style.width = W + "px";
    if (canvas.style && canvas.style.height !== H + "px") canvas.style.height = H + "px";
    var ctx = canvas.getContext("2d"), pats = canvas.conveyorPatterns, font = null, align = null, ink = null;
    // Setting a canvas font or colour parses it: only when it changes.
    function textStyle(colour, f, a) {
      if (font !== f) { ctx.font = font = f; }
      if (align !== a) { ctx.textAlign = align = a; }
      if (ink !== colour) { ctx.fillStyle = ink = colour; }
    }
    if (!pats || pats.dpr !== dpr) pats = canvas.conveyorPatterns = { dpr: dpr };
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    function pattern(name) {
      if (pats[name]) return pats[name];
      var p = PATTERNS[name], c = document.createElement("canvas"), n = Math.round(8 * dpr);
      c.width = c.height = n;
      var g = c.getContext("2d");
      if (p.bg) { g.fillStyle = p.bg; g.fillRect(0, 0, n, n); }
      g.strokeStyle = p.line;
      g.lineWidth = 2.2 * dpr;
      g.beginPath();
      tilePath(p.angle).forEach(function (q) { g.moveTo(q[0] * dpr, q[1] * dpr); g.lineTo(q[2] * dpr, q[3] * dpr); });
      g.stroke();
      pats[name] = ctx.createPattern(c, "repeat");
      if (pats[name].setTransform) pats[name].setTransform(new DOMMatrix().scale(1 / dpr));
      return pats[name];
    }
    return {
      rect: function (x, y, w, h, o) {
        ink = null;
        if (o.fill) { ctx.fillStyle = o.fill; ctx.fillRect(x, y, w, h); }
        if (o.pattern) { ctx.fillStyle = pattern(o.pattern); ctx.fillRect(x, y, w, h); }
        if (o.stroke) {
          var lw = o.lineWidth || 1;
          ctx.strokeStyle = o.stroke; ctx.lineWidth = lw;
          ctx.setLineDash(o.dash ? [3, 2] : []);
          ctx.strokeRect(x + lw / 2, y + lw / 2, Math.max(w - lw, 0), Math.max(h - lw, 0));
          ctx.setLineDash([]);
        }
      },
      text: function (x, y, str, o) {
        textStyle(o.color || INK, (o.bold ? "600 " : "") + (o.size || 11) + "px system-ui, sans-serif", o.align || "left");
        ctx.fillText(str, x, y);
      },
      // many shapes of one style, flat: x, y, w, h, class for each (one style change)
      rects: function (list, o) {
        var j;
        if (o.fill || o.pattern) {
          ctx.fillStyle = o.fill || pattern(o.pattern);
          for (j = 0; j < list.length; j += 5) ctx.fillRect(list[j], list[j + 1], list[j + 2], list[j + 3]);
        }
        if (o.stroke) {
          ctx.strokeStyle = o.stroke; ctx.lineWidth = 1;
          ctx.setLineDash(o.dash ? [3, 2] : []);
          ctx.beginPath();
          for (j = 0; j < list.length; j += 5) {
            ctx.rect(list[j] + 0.5, list[j + 1] + 0.5, Math.max(list[j + 2] - 1, 0), Math.max(list[j + 3] - 1, 0));
          }
          ctx.stroke();
          ctx.setLineDash([]);
        }
        ink = null;  // fillStyle changed under the text cache
      },
      texts: function (list, o) {
        textStyle(o.color || INK, (o.size || 11) + "px system-ui, sans-serif", o.align || "left");
        for (var j = 0; j < list.length; j += 3) ctx.fillText(list[j + 2], list[j], list[j + 1]);
      },
      measure: function (str, size) {
        textStyle(ink || INK, (size || 11) + "px system-ui, sans-serif", align || "left");
        return ctx.measureText(str).width;
      },
      line: function (pts, o) {
        ink = null;
        ctx.beginPath();
        pts.forEach(function (p, i) { if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); });
        if (o.fill) { ctx.fillStyle = o.fill; ctx.fill(); }
        if (o.color) {
          ctx.strokeStyle = o.color; ctx.lineWidth = o.width || 1;
          ctx.setLineDash(o.dash ? [4, 3] : []);
          ctx.stroke();
          ctx.setLineDash([]);
        }
      },
      dot: function (x, y, r, o) {
        ink = null;
        ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI);
        if (o.fill && o.fill !== "none") { ctx.fillStyle = o.fill; ctx.fill(); }
        if (o.stroke) { ctx.strokeStyle = o.stroke; ctx.lineWidth = o.width || 1; ctx.stroke(); }
      },
      finish: function () { return canvas; }
    };
  }

  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/"/g, "&quot;"); }
  function f2(x) { return +x.toFixed(2); }

  var svgIds = 0;
  function patternDefs(prefix) {
    return Object.keys(PATTERNS).map(function (name) {
      var p = PATTERNS[name];
      return '<pattern id="' + prefix + name + '" width="8" height="8" patternUnits="userSpaceOnUse">' +
        (p.bg ? '<rect width="8" height="8" fill="' + p.bg + '"/>' : "") + '<path d="' +
        tilePath(p.angle).map(function (q) { return "M" + q[0] + " " + q[1] + "L" + q[2] + " " + q[3]; }).join("") +
        '" stroke="' + p.line + '" stroke-width="2.2"/></pattern>';
    }).join("");
  }

  // SVG painter; `bare` leaves out the white background (legend swatches).
  function svgPainter(W, H, title, bare) {
    var out = [], prefix = "hatch" + (++svgIds) + "-";
    var measureCanvas = null;
    return {
      rect: function (x, y, w, h, o) {
        var a = ' x="' + f2(x) + '" y="' + f2(y) + '" width="' + f2(w) + '" height="' + f2(h) + '"';
        if (o.fill) out.push("<rect" + a + ' fill="' + o.fill + '"' + (o.cls ? ' class="' + o.cls + '"' : "") + "/>");
        if (o.pattern) out.push("<rect" + a + ' fill="url(#' + prefix + o.pattern + ')"' +
          (o.fill ? "" : ' class="' + (o.cls || o.pattern) + '"') + "/>");
        if (o.stroke) {
          var lw = o.lineWidth || 1;
          out.push('<rect x="' + f2(x + lw / 2) + '" y="' + f2(y + lw / 2) + '" width="' + f2(Math.max(w - lw, 0)) +
            '" height="' + f2(Math.max(h - lw, 0)) + '" fill="none" stroke="' + o.stroke + '" stroke-width="' + lw + '"' +
            (o.dash ? ' stroke-dasharray="3 2"' : "") + (o.cls && !o.fill && !o.pattern ? ' class="' + o.cls + '"' : "") + "/>");
        }
      },
      text: function (x, y, str, o) {
        var anchor = { left: "start", center: "middle", right: "end" }[o.align || "left"];
        out.push('<text x="' + f2(x) + '" y="' + f2(y) + '" fill="' + (o.color || INK) + '" font-size="' +
          (o.size || 11) + '"' + (o.bold ? ' font-weight="600"' : "") + ' text-anchor="' + anchor + '">' +
          esc(str) + "</text>");
      },
      rects: function (list, o) {
        for (var j = 0; j < list.length; j += 5) {
          this.rect(list[j], list[j + 1], list[j + 2], list[j + 3], { fill: o.fill, pattern: o.pattern, stroke: o.stroke,
            dash: o.dash, cls: o.stroke ? null : list[j + 4] });
        }
      },
      texts: function (list, o) {
        for (var j = 0; j < list.length; j += 3) this.text(list[j], list[j + 1], list[j + 2], o);
      },
      measure: function (str, size) {
        measureCanvas = measureCanvas || document.createElement("canvas").getContext("2d");
        measureCanvas.font = (size || 11) + "px system-ui, sans-serif";
        return measureCanvas.measureText(str).width;
      },
      line: function (pts, o) {
        out.push('<path d="' + pts.map(function (p, i) { return (i ? "L" : "M") + f2(p[0]) + " " + f2(p[1]); }).join("") +
          (o.fill ? 'Z" fill="' + o.fill + '"' : '" fill="none"') +
          (o.color ? ' stroke="' + o.color + '" stroke-width="' + (o.width || 1) + '"' +
            (o.dash ? ' stroke-dasharray="4 3"' : "") : "") + "/>");
      },
      dot: function (x, y, r, o) {
        out.push('<circle cx="' + f2(x) + '" cy="' + f2(y) + '" r="' + r + '" fill="' + (o.fill || "none") + '"' +
          (o.stroke ? ' stroke="' + o.stroke + '" stroke-width="' + (o.width || 1) + '"' : "") + "/>");
      },
      finish: function () {
        return '<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' + H + '" viewBox="0 0 ' +
          W + " " + H + '" font-family="system-ui, sans-serif"' + (bare ? ' aria-hidden="true"' :
          ' role="img" aria-label="' + esc(title) + '"><title>' + esc(title) + "</title") + "><defs>" +
          patternDefs(prefix) + "</defs>" + (bare ? "" : '<rect width="' + W + '" height="' + H + '" fill="#fff"/>') +
          out.join("") + "</svg>";
      }
    };
  }

  // ---- the legend: one list of items, drawn on screen (HTML with SVG
  // swatches) and into downloads (any painter), from the same definitions.
  var SWATCH = {
    F: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: strong(2) }); },
    B: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: tint(2), stroke: edge(2) }); },
    I: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: tint(2), stroke: edge(2), dash: true }); },
    W: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: tint(2), pattern: "w", cls: "swatch" }); },
    bubble: function (p, x, y, w, h) { p.rect(x, y, w, h, { pattern: "bubble", cls: "swatch" }); },
    transfer: function (p, x, y, w, h) { p.rect(x, y, w, h, { pattern: "transfer", cls: "swatch" }); },
    allreduce: function (p, x, y, w, h) { p.rect(x, y, w, h, { pattern: "allreduce", cls: "swatch" }); },
    chunk: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: strong(2) }); p.rect(x, y, w, 3, { fill: "#1d2330" }); },
    memory: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: "rgba(60,80,140,0.45)", stroke: "#2d3f73" }); },
    critical: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: strong(2), stroke: "#000", lineWidth: 2.5 }); },
    chain: function (p, x, y, w, h) { p.rect(x, y, w, h, { fill: strong(2), stroke: "#e0a100", lineWidth: 2.5 }); }
  };
  var LABELS = {
    F: "F forward (colour: micro-batch; \"s5 F3\": stage 5, micro-batch 3)",
    B: "B backward", I: "I input-gradient backward", W: "W weight-gradient backward",
    bubble: "bubble: the rank waits on a peer",
    transfer: "transfer in flight: sending, or sent and not yet arrived (idle, not bubble)",
    allreduce: "gradient all-reduce over the dp replicas (where the rank does not compute)",
    chunk: "dark top band: the rank's later chunk",
    memory: "activations held per rank (micro-batch-equivalents, one scale)",
    critical: "critical path of the step", chain: "what the chosen cell waits for"
  };
  var ORDER = ["F", "B", "I", "W", "bubble", "transfer", "allreduce", "chunk", "memory", "critical", "chain"];

  function legendItems(drawn) {
    return ORDER.filter(function (k) { return drawn[k]; }).map(function (k) {
      return { key: k, label: LABELS[k], swatch: SWATCH[k] };
    });
  }
  function legendHtml(drawn) {
    return legendItems(drawn).map(function (it) {
      var p = svgPainter(22, 14, "", true);
      it.swatch(p, 1, 1, 20, 12);
      return '<span data-key="' + it.key + '">' + p.finish() + esc(it.label) + "</span>";
    }).join("");
  }

  return { canvasPainter: canvasPainter, svgPainter: svgPainter, legendItems: legendItems,
    legendHtml: legendHtml, labelOn: labelOn, rgbLuminance: rgbLuminance, contrast: contrast,
    parseHex: parseHex, strong: strong, tint: tint, edge: edge, hue: hue, PATTERNS: PATTERNS,
    INK: INK, MUTED: MUTED };
}());
