/* The part of the explorer that mirrors conveyor's Python engine: decoding the
 * embedded action orders (conveyor/views/encode.py), the in-order replay
 * (conveyor/schedule/deps.py, compute actions, free links) and the idle
 * intervals of a timeline (Timeline.idle_intervals). Kept apart from the
 * drawing so that what must stay equal to Python is in one short file; the
 * browser tests compare its results with Python's simulate(). */
var ConveyorReplay = (function () {
  "use strict";

  // ---- decoding: mirror of conveyor/views/encode.py ------------------------
  function expand(text, alphabet) {
    var i = 0, n = text.length;
    function number() {
      var j = i;
      while (i < n && text.charCodeAt(i) >= 48 && text.charCodeAt(i) <= 57) i++;
      return j === i ? null : parseInt(text.slice(j, i), 10);
    }
    function seq() {
      var out = [];
      while (i < n && text[i] !== ")") {
        var body;
        if (text[i] === "(") { i++; body = seq(); i++; }
        else {
          var jump = null;
          if (text[i] === "@") { i++; jump = number(); }
          var sym = alphabet.indexOf(text[i]);
          if (sym < 0) throw new Error("bad order code " + text + " at " + i);
          i++;
          body = [[sym, jump]];
        }
        var count = number();
        if (count === null) count = 1;
        for (var c = 0; c < count; c++) for (var t = 0; t < body.length; t++) out.push(body[t]);
      }
      return out;
    }
    return seq();
  }

  function decodeRow(text, stages, alphabet) {
    var expected = {}, row = [], tokens = expand(text, alphabet);
    for (var t = 0; t < tokens.length; t++) {
      var sym = tokens[t][0], jump = tokens[t][1];
      var mb = jump === null ? (expected[sym] || 0) : jump;
      expected[sym] = mb + 1;
      row.push({ s: stages[Math.floor(sym / 4)], k: sym % 4, mb: mb });
    }
    return row;
  }

  function stagesByRank(placement, P) {
    var out = [];
    for (var r = 0; r < P; r++) out.push([]);
    placement.forEach(function (r, s) { out[r].push(s); });
    return out;
  }

  // ---- replay: port of conveyor/schedule/deps.py replay() for compute-only
  // schedules with free links (the cost model the explorer offers). Same
  // order of operations, so the same floating-point times.
  function replay(rows, placement, dur) {
    var S = placement.length, P = rows.length, M = 0, r, a, t;
    rows.forEach(function (row) { row.forEach(function (x) { if (x.mb + 1 > M) M = x.mb + 1; }); });
    var key = function (s, k, mb) { return (s * 4 + k) * M + mb; };
    var hasI = new Uint8Array(S * M);  // (s, mb) whose input gradient comes from I, not B
    rows.forEach(function (row) { row.forEach(function (x) { if (x.k === 2) hasI[x.s * M + x.mb] = 1; }); });
    var end = new Float64Array(S * 4 * M).fill(NaN);
    function deps(x) {
      if (x.k === 0) return x.s === 0 ? [] : [key(x.s - 1, 0, x.mb)];
      if (x.k === 3) return [key(x.s, 2, x.mb)];
      var d = [key(x.s, 0, x.mb)];
      if (x.s < S - 1) d.push(key(x.s + 1, hasI[(x.s + 1) * M + x.mb] ? 2 : 1, x.mb));
      return d;
    }
    var pos = new Array(P).fill(0), clock = new Array(P).fill(0), waiting = {};
    var ready = [], head = 0, events = [];
    for (r = 0; r < P; r++) ready.push(r);
    while (head < ready.length) {
      r = ready[head++];
      var row = rows[r];
      while (pos[r] < row.length) {
        a = row[pos[r]];
        t = clock[r];
        var missing = null, ds = deps(a);
        for (var j = 0; j < ds.length; j++) {
          var e = end[ds[j]];
          if (e !== e) { missing = ds[j]; break; }  // NaN: not run yet
          if (e > t) t = e;
        }
        if (missing !== null) { (waiting[missing] = waiting[missing] || []).push(r); break; }
        var tEnd = t + dur[a.k][a.s];
        var ka = key(a.s, a.k, a.mb);
        end[ka] = tEnd;
        clock[r] = tEnd;
        pos[r]++;
        events.push({ r: r, s: a.s, k: a.k, mb: a.mb, start: t, end: tEnd });
        if (waiting[ka]) { ready.push.apply(ready, waiting[ka]); delete waiting[ka]; }
      }
    }
    for (r = 0; r < P; r++) {
      if (pos[r] < rows[r].length) throw new Error("replay stuck on rank " + r);
    }
    return events;
  }

  // durations per kind and stage, as CostModel(forward=1, backward=ratio) resolves them
  function slotCosts(ratio, S) {
    var f = [], b = [], i = [], w = [];
    for (var s = 0; s < S; s++) { f.push(1); b.push(ratio); i.push(ratio / 2); w.push(ratio - ratio / 2); }
    return [f, b, i, w];
  }

  // ---- metrics from events: mirror of Timeline.idle_intervals -------------
  function layout(model) {
    var P = model.P, byRank = [], t0 = Infinity, tEnd = -Infinity, r;
    for (r = 0; r < P; r++) byRank.push([]);
    model.events.forEach(function (e) {
      byRank[e.r].push(e);
      if (e.start < t0) t0 = e.start;
      if (e.end > tEnd) tEnd = e.end;
    });
    if (!model.events.length) { t0 = 0; tEnd = 0; }
    var busy = 0, gaps = [];
    byRank.forEach(function (row, r) {
      row.sort(function (a, b) { return a.start - b.start || a.end - b.end; });
      var t = t0;
      row.forEach(function (e) {
        if (e.start > t + 1e-12) gaps.push([r, t, e.start]);
        t = Math.max(t, e.end);
        busy += e.end - e.start;
      });
      if (tEnd > t + 1e-12) gaps.push([r, t, tEnd]);
    });
    var T = tEnd - t0;
    return { t0: t0, T: T, gaps: gaps, bubble: T > 0 ? 1 - busy / (P * T) : 0 };
  }

  return { decodeRow: decodeRow, stagesByRank: stagesByRank, replay: replay,
    slotCosts: slotCosts, layout: layout };
}());
