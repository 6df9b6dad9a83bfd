/* conveyor explorer: "why is this rank idle?". Click (or reach with the
 * keyboard: "." and "," on the focused chart) any idle cell, or any work
 * cell, and the page says what it waits for, which action on which rank, and
 * the chain of waits back to the step's start, highlighted on the chart. The
 * "critical path" box outlines the chain that ends the step. Both come from
 * the bindings the replay recorded (replay.js; conveyor/sim/critical.py). */
var ConveyorExplain = (function () {
  "use strict";
  var KINDS = "FBIW", WHAT = ["forward", "backward", "input-gradient backward", "weight-gradient backward"];
  var R = ConveyorReplay, api = null, sel = null;
  var $ = function (id) { return document.getElementById(id); };

  function key(st) { return [st.schedule, st.compare, st.P, st.M, st.view, st.costs.key, st.fixed].join("|"); }
  function code(e) { return e.s + KINDS[e.k] + e.mb; }
  function n(x) { return api.num(x); }
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;"); }
  function name(e) {
    return code(e) + " (" + WHAT[e.k] + " of micro-batch " + e.mb + " on stage " + e.s + ", rank " + e.r + ")";
  }

  // The chain as lines, first first: a data hop starts a new line, a rank's
  // run of back-to-back actions is one line.
  function chainLines(chain) {
    var lines = [], cur = null;
    chain.forEach(function (e) {
      if (!cur || e.via !== 1) {
        cur = { r: e.r, first: e, last: e, count: 1, via: e.via, link: e.link };
        lines.push(cur);
      } else { cur.last = e; cur.count++; }
    });
    var out = lines.map(function (l) {
      var head = l.via === 0 ? "starts the step" : l.link ? "gets its input after a " + n(l.link) + " transfer" : "gets its input";
      var body = l.count === 1 ? code(l.first) : code(l.first) + " … " + code(l.last) + " (" + l.count + " actions back to back)";
      return "rank " + l.r + ": " + body + ", " + n(l.first.start) + " to " + n(l.last.end) + " (" + head + ")";
    });
    var busiest = lines.reduce(function (b, l) { return !b || l.last.end - l.first.start > b.last.end - b.first.start ? l : b; }, null);
    return { lines: out, busiest: busiest };
  }
  function listHtml(chain) {
    var c = chainLines(chain), lines = c.lines, skipped = 0;
    if (lines.length > 10) { skipped = lines.length - 9; lines = lines.slice(0, 3).concat(["…"], lines.slice(-6)); }
    return "<ol>" + lines.map(function (l) { return "<li>" + esc(l) + "</li>"; }).join("") + "</ol>" +
      (skipped ? '<span class="k">(' + skipped + " links of the chain not listed)</span> " : "") +
      (c.busiest && c.busiest.count > 1 ? "Most of this chain is rank " + c.busiest.r + "'s own work from " +
        n(c.busiest.first.start) + " to " + n(c.busiest.last.end) + "." : "");
  }

  // What an idle cell [a, b) on rank r of model m waits for: {html, chain}.
  function idleText(m, r, a, b) {
    var next = null;
    m.events.forEach(function (e) { if (e.r === r && e.k < 4 && e.start === b) next = e; });
    var head = "<b>" + esc(m.name) + ", rank " + r + " idle from " + n(a) + " to " + n(b) + "</b> (" + n(b - a) + "): ";
    if (!next) {
      var path = R.criticalPath(m.events), last = path[path.length - 1];
      return { chain: path, html: head + "its work is done; the step ends when " + esc(name(last)) + " ends at " +
        n(last.end) + ". The chain that ends the step (its critical path):" + listHtml(path) };
    }
    if (next.via !== 2) {  // cannot happen after a gap, but say so rather than guess
      return { chain: [next], html: head + "then " + esc(name(next)) + " starts." };
    }
    var dep = next.by, chain = R.chainTo(dep);
    return { chain: chain.concat([next]), html: head + "it waits for " + esc(name(dep)) + ", which ends at " +
      n(dep.end) + (next.link ? " and reaches rank " + r + " " + n(next.link) + " later" : "") + "; then " +
      esc(code(next)) + " starts. The chain back to the step's start:" + listHtml(chain) };
  }
  function workText(m, e) {
    var why = e.via === 0 ? "it starts the step" : e.via === 1 ? "its rank was busy until then with " + esc(name(e.by)) :
      "it waited for " + esc(name(e.by)) + (e.link ? " and its " + n(e.link) + " transfer" : "");
    return { chain: R.chainTo(e), html: "<b>" + esc(m.name) + ": " + esc(name(e)) + " runs from " + n(e.start) + " to " +
      n(e.end) + "</b>: " + why + ". The chain back to the step's start:" + listHtml(R.chainTo(e)) };
  }

  function explain(hit) {
    var cur = api.current(), st = cur.st, m = api.models[hit.panel];
    if (!m) return null;
    var out = hit.event ? workText(m, hit.event) : idleText(m, hit.idle[0], hit.idle[1], hit.idle[2]);
    sel = { key: key(st), panel: hit.panel, chain: out.chain, pick: hit.event ? null : hit.idle.slice(0, 3), html: out.html };
    return sel;
  }
  function showSelection() {
    $("explain").hidden = !sel;
    $("explain").innerHTML = sel ? sel.html : "";
  }

  function hitAt(x, y) {
    var hits = (api.current() || {}).hits || [];
    for (var i = hits.length - 1; i >= 0; i--) {
      var h = hits[i];
      if (x >= h.x && x < h.x + h.w && y >= h.y && y < h.y + h.h) return h;
    }
    return null;
  }
  function idleHits() {
    return ((api.current() || {}).hits || []).filter(function (h) { return h.idle && h.panel === 0; })
      .sort(function (a, b) { return a.idle[1] - b.idle[1] || a.idle[0] - b.idle[0]; });
  }
  function choose(hit) {
    if (!hit) { sel = null; showSelection(); api.redraw(); return null; }
    explain(hit);
    api.redraw();   // draws the chain; the selection survives while the state is the same
    showSelection();
    return sel.html;
  }
  function step(delta) {
    var list = idleHits();
    if (!list.length) return;
    var i = -1;
    if (sel && sel.pick) list.forEach(function (h, k) { if (h.idle[0] === sel.pick[0] && h.idle[1] === sel.pick[1]) i = k; });
    choose(list[(i + delta + list.length) % list.length]);
  }

  function init(a) {
    api = a;
    api.highlightFor = function (m, i, st) {
      if (sel && sel.key !== key(st)) { sel = null; showSelection(); }
      var hl = {};
      if (st.critical) hl.critical = R.criticalPath(m.events);
      if (sel && sel.panel === i) { hl.chain = sel.chain; hl.pick = sel.pick; }
      return hl;
    };
    var canvas = $("gantt-canvas");
    canvas.addEventListener("click", function (ev) {
      var box = canvas.getBoundingClientRect();
      choose(hitAt(ev.clientX - box.left, ev.clientY - box.top));
    });
    $("gantt").addEventListener("keydown", function (ev) {
      if (ev.key === ".") { ev.preventDefault(); step(1); }
      else if (ev.key === ",") { ev.preventDefault(); step(-1); }
      else if (ev.key === "Enter" && !sel) { ev.preventDefault(); step(1); }
      else if (ev.key === "Escape") choose(null);
    });
    // for tests: where (page coordinates) the idle cell of rank r at time t of panel p is drawn
    api.idlePoint = function (p, r, t) {
      var h = ((api.current() || {}).hits || [])
        .filter(function (x) { return x.idle && x.panel === p && x.idle[0] === r && x.idle[1] <= t && t < x.idle[2]; })[0];
      if (!h) return null;
      var box = canvas.getBoundingClientRect();
      return [box.left + h.x + h.w / 2, box.top + h.y + h.h / 2];
    };
    api.explained = function () { return sel ? $("explain").textContent : null; };
  }

  return { init: init, chainLines: chainLines };
}());
