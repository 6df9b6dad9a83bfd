/* The part of the explorer that mirrors conveyor's Python engine: decoding the
 * embedded action orders (conveyor/views/encode.py), the in-order replay
 * (conveyor/schedule/deps.py, compute actions, free links) with why each
 * action started when it did and the critical path (conveyor/sim/critical.py),
 * and the idle intervals of a timeline (Timeline.idle_intervals). Kept apart
 * from the drawing so that what must stay equal to Python is in one short
 * file; the browser tests compare its results with Python's. */
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
  // schedules (no SEND/RECV actions): a dependency across ranks waits for the
  // link time of its cut, as the simulator's CostModel gives it. Same order of
  // operations as Python, so the same floating-point times.
  // costs: {dur: [F, B, I, W] lists per stage, link: list per cut}.
  // Each event also says why it started then (as conveyor/sim/critical.py):
  // via 0 the step's start, 1 its rank's previous action (prev), 2 the input
  // from event `by`, which ended `link` earlier; ties go to the rank, then to
  // the first dependency, as the replay's strict ">" gives them.
  // lite: no events, only the step's end (the curve's many replays make no garbage).
  function replay(rows, placement, costs, lite) {
    var S = placement.length, P = rows.length, M = 0, r, a, t, dur = costs.dur, link = costs.link, tMax = 0;
    rows.forEach(function (row) { row.forEach(function (x) { if (x.mb + 1 > M) M = x.mb + 1; }); });
    var key = function (s, k, mb) { return (s * 4 + k) * M + mb; };
    var hasI = new Uint8Array(S * M);  // (s, mb) whose input gradient comes from I, not B
    rows.forEach(function (row) { row.forEach(function (x) { if (x.k === 2) hasI[x.s * M + x.mb] = 1; }); });
    var end = new Float64Array(S * 4 * M).fill(NaN);
    var depKey = [0, 0], depCut = [0, 0];  // reused: at most two dependencies per action
    function deps(x) {  // fills depKey/depCut, returns how many; cut -1: same rank
      if (x.k === 0) {
        if (x.s === 0) return 0;
        depKey[0] = key(x.s - 1, 0, x.mb);
        depCut[0] = placement[x.s - 1] === placement[x.s] ? -1 : x.s - 1;
        return 1;
      }
      if (x.k === 3) { depKey[0] = key(x.s, 2, x.mb); depCut[0] = -1; return 1; }
      depKey[0] = key(x.s, 0, x.mb); depCut[0] = -1;
      if (x.s === S - 1) return 1;
      depKey[1] = key(x.s + 1, hasI[(x.s + 1) * M + x.mb] ? 2 : 1, x.mb);
      depCut[1] = placement[x.s + 1] === placement[x.s] ? -1 : x.s;
      return 2;
    }
    var pos = new Array(P).fill(0), clock = new Array(P).fill(0), waiting = {};
    var ready = [], head = 0, events = [], evAt = lite ? null : new Array(S * 4 * M), last = new Array(P).fill(null);
    for (r = 0; r < P; r++) ready.push(r);
    while (head < ready.length) {
      r = ready[head++];
      var row = rows[r];
      while (pos[r] < row.length) {
        a = row[pos[r]];
        t = clock[r];
        var missing = null, n = deps(a), prev = last[r], via = prev ? 1 : 0, by = prev, hop = 0;
        for (var j = 0; j < n; j++) {
          var e = end[depKey[j]], lk = 0;
          if (e !== e) { missing = depKey[j]; break; }  // NaN: not run yet
          if (depCut[j] >= 0) { lk = link[depCut[j]]; e += lk; }
          if (e > t) { t = e; via = 2; by = lite ? null : evAt[depKey[j]]; hop = lk; }
        }
        if (missing !== null) { (waiting[missing] = waiting[missing] || []).push(r); break; }
        var tEnd = t + dur[a.k][a.s];
        var ka = key(a.s, a.k, a.mb);
        end[ka] = tEnd;
        clock[r] = tEnd;
        pos[r]++;
        if (lite) { if (tEnd > tMax) tMax = tEnd; last[r] = true; } else {
          var ev = { r: r, s: a.s, k: a.k, mb: a.mb, start: t, end: tEnd, via: via, by: by, link: hop, prev: prev };
          events.push(ev);
          evAt[ka] = ev;
          last[r] = ev;
        }
        if (waiting[ka]) { ready.push.apply(ready, waiting[ka]); delete waiting[ka]; }
      }
    }
    for (r = 0; r < P; r++) {
      if (pos[r] < rows[r].length) throw new Error("replay stuck on rank " + r);
    }
    return lite ? tMax : events;
  }

  // One value for every stage (a number or a one-element list) or one per stage.
  function perStage(value, n, what) {
    var list = Array.isArray(value) ? value : [value];
    if (list.length === 1) return Array.from({ length: n }, function () { return +list[0]; });
    if (list.length !== n) throw new Error(what + " has " + list.length + " values but there are " + n +
      (what === "activation bytes" ? " cuts between" : ""));
    return list.map(Number);
  }

  // Durations as CostModel(forward=f, backward=i+w, input_grad=i, weight_grad=w,
  // latency, bandwidth, activation_bytes).table(S) resolves them. c: {f, i, w
  // (number or list), latency, bandwidth (Infinity: free), bytes (number or list per cut)}.
  // scale multiplies every compute time (the whole batch in one micro-batch).
  function costTable(c, S, scale) {
    var f = perStage(c.f, S, "F"), i = perStage(c.i, S, "I"), w = perStage(c.w, S, "W"), b = [];
    if (scale !== 1) {
      f = f.map(function (x) { return x * scale; });
      i = i.map(function (x) { return x * scale; });
      w = w.map(function (x) { return x * scale; });
    }
    for (var s = 0; s < S; s++) b.push(i[s] + w[s]);
    var bytes = perStage(c.bytes, Math.max(S - 1, 0), "activation bytes");
    var link = bytes.map(function (x) { return c.latency + (x ? x / c.bandwidth : 0); });
    return { dur: [f, b, i, w], link: link, bytes: bytes };
  }

  // durations per kind and stage, as CostModel(forward=1, backward=ratio) resolves them
  function slotCosts(ratio, S) {
    return costTable({ f: 1, i: ratio / 2, w: ratio - ratio / 2, latency: 0, bandwidth: Infinity,
      bytes: 0 }, S, 1);
  }

  // The critical path (conveyor/sim/critical.py critical_path): from the
  // compute event that ends last (the lowest rank on a tie), each event's
  // binding back to one that started at the step's start; first event first.
  function criticalPath(events) {
    var last = null;
    events.forEach(function (e) {
      if (e.k < 4 && (!last || e.end > last.end || (e.end === last.end && e.r < last.r))) last = e;
    });
    return chainTo(last);
  }
  // The chain of bindings that ends at event e, first event first.
  function chainTo(e) {
    var out = [];
    for (; e; e = e.via ? e.by : null) out.push(e);
    return out.reverse();
  }

  // The bubble as an exact fraction [n, d] when every duration and the step
  // are small binary fractions (1, 0.5, 0.25 ...: then the float sums are
  // exact, as Python's fsum is) and d <= 100000 (metrics.MAX_DEN), else null.
  function exactBubble(events, P, T) {
    if (!(T > 0)) return [0, 1];
    for (var k = 0, f = 1; k <= 12; k++, f *= 2) {
      var ok = Number.isInteger(T * f) && T * f < 1e12, busy = 0;
      for (var j = 0; ok && j < events.length; j++) {
        var e = events[j];
        if (e.k >= 4) continue;
        var d = (e.end - e.start) * f;
        if (!Number.isInteger(d)) ok = false; else busy += d;
      }
      if (!ok) continue;
      var den = P * T * f, num = den - busy, g = gcd(num, den);
      num /= g; den /= g;
      return den <= 100000 ? [num, den] : null;
    }
    return null;
  }
  function gcd(a, b) { while (b) { var t = a % b; a = b; b = t; } return a || 1; }

  // Per rank, activations held over time: + the stage's weight when a forward
  // starts, - when its B (or W) ends; weight: what one micro-batch of that
  // stage holds in micro-batch-equivalents (1, or 1/v for one of v chunks of
  // the same model). Peaks follow Timeline.peak_activations (event order).
  function memory(events, P, forwardOnly, weight) {
    var byRank = [], r;
    for (r = 0; r < P; r++) byRank.push([]);
    events.forEach(function (e) { if (e.k < 4) byRank[e.r].push(e); });
    return byRank.map(function (row) {
      row.sort(function (a, b) { return a.start - b.start || a.end - b.end; });
      var held = 0, peak = 0, marks = [];
      row.forEach(function (e) {
        if (forwardOnly) return;
        var w = weight ? weight[e.s] : 1;
        if (e.k === 0) { held += w; peak = Math.max(peak, held); marks.push([e.start, w]); }
        else if (e.k === 1 || e.k === 3) { held -= w; marks.push([e.end, -w]); }
      });
      marks.sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; });
      var level = 0, steps = [[0, 0]];
      marks.forEach(function (m) { level += m[1]; steps.push([m[0], level]); });
      return { peak: +peak.toPrecision(12), steps: steps };
    });
  }

  // ---- data parallelism: mirror of conveyor/sim/dp.py and CostModel's node links
  // c: {dp, rpn (ranks per node, 0: one node), latency, bandwidth (within a node),
  // ilat, ibw (between nodes), pbytes (parameter bytes, one or per stage), overlap}.
  function nodeOf(g, rpn) { return rpn > 0 ? Math.floor(g / rpn) : 0; }
  function crossesNodes(r1, r2, P, dp, rpn) {
    if (!(rpn > 0) || r1 === r2) return false;
    for (var d = 0; d < dp; d++) if (nodeOf(d * P + r1, rpn) !== nodeOf(d * P + r2, rpn)) return true;
    return false;
  }
  function groupSpansNodes(r, P, dp, rpn) {
    if (!(rpn > 0) || dp <= 1) return false;
    for (var d = 1; d < dp; d++) if (nodeOf(d * P + r, rpn) !== nodeOf(r, rpn)) return true;
    return false;
  }
  // time to cross each cut when ranks sit on nodes (CostModel.cut_links)
  function nodeLinks(c, placement, bytes) {
    var P = Math.max.apply(null, placement) + 1;
    return bytes.map(function (x, cut) {
      return crossesNodes(placement[cut], placement[cut + 1], P, c.dp, c.rpn)
        ? c.ilat + (x ? x / c.ibw : 0) : c.latency + (x ? x / c.bandwidth : 0);
    });
  }
  function ringTime(nbytes, dp, lat, bw) {  // ring_allreduce_time
    if (dp <= 1) return 0;
    var steps = 2 * (dp - 1), moved = steps / dp * nbytes;
    return (moved ? moved / bw : 0) + steps * lat;
  }
  // Each rank's all-reduces (schedule_allreduces): a stage's starts when its
  // last backward ends (or the rank's last action, without overlap), one at a
  // time per rank in the order they become ready. Events {r, s, k: 5, start, end, ready}.
  function allreduce(events, placement, c) {
    var S = placement.length, P = Math.max.apply(null, placement) + 1, r, s;
    var pb = perStage(c.pbytes, S, "parameter bytes"), last = [], rankEnd = [], out = [];
    for (r = 0; r < P; r++) rankEnd.push(-Infinity);
    events.forEach(function (e) {
      if (e.end > rankEnd[e.r]) rankEnd[e.r] = e.end;
      if (e.k >= 1 && e.k <= 3 && !(last[e.s] >= e.end)) last[e.s] = e.end;
    });
    for (r = 0; r < P; r++) {
      var ready = [];
      for (s = 0; s < S; s++) {
        if (placement[s] !== r || last[s] === undefined) continue;
        var inter = groupSpansNodes(r, P, c.dp, c.rpn);
        var time = ringTime(pb[s], c.dp, inter ? c.ilat : c.latency, inter ? c.ibw : c.bandwidth);
        if (time > 0) ready.push({ t: c.overlap ? last[s] : rankEnd[r], s: s, time: time });
      }
      ready.sort(function (a, b) { return a.t - b.t || a.s - b.s; });
      var free = null;
      ready.forEach(function (x) {
        var start = free === null || x.t > free ? x.t : free;
        free = start + x.time;
        out.push({ r: r, s: x.s, k: 5, mb: 0, start: start, end: free, ready: x.t });
      });
    }
    return out;
  }

  // ---- metrics from events: mirror of Timeline.idle_intervals -------------
  // Compute events (k 0-3) are busy time; communication events (k 4, measured
  // runs only) span the step but are not busy: gaps are what is neither, and
  // comm is drawn on its own, never as bubble.
  function layout(model) {
    var P = model.P, byRank = [], t0 = Infinity, tEnd = -Infinity, r;
    for (r = 0; r < P; r++) byRank.push([]);
    model.events.forEach(function (e) {
      byRank[e.r].push(e);
      if (e.start < t0) t0 = e.start;
      if (e.end > tEnd) tEnd = e.end;
    });
    if (!model.events.length) { t0 = 0; tEnd = 0; }
    var busy = 0, comm = 0, gaps = [];
    byRank.forEach(function (row, r) {
      row.sort(function (a, b) { return a.start - b.start || a.end - b.end; });
      var t = t0;
      row.forEach(function (e) {
        if (e.start > t + 1e-12) gaps.push([r, t, e.start]);
        t = Math.max(t, e.end);
        if (e.k < 4) busy += e.end - e.start; else comm += e.end - e.start;
      });
      if (tEnd > t + 1e-12) gaps.push([r, t, tEnd]);
    });
    var T = tEnd - t0;
    return { t0: t0, T: T, gaps: gaps, bubble: T > 0 ? 1 - busy / (P * T) : 0,
      comm: T > 0 ? comm / (P * T) : 0 };
  }

  return { decodeRow: decodeRow, stagesByRank: stagesByRank, replay: replay,
    slotCosts: slotCosts, costTable: costTable, memory: memory, layout: layout,
    nodeLinks: nodeLinks, allreduce: allreduce, criticalPath: criticalPath, chainTo: chainTo,
    exactBubble: exactBubble };
}());
