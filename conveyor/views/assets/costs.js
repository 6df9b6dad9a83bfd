/* conveyor explorer: the typed costs, and what each stage of a schedule gets.
 *
 * Schedules are compared on the same model. By default ("per P-th of the
 * model") F, I and W are the times of one P-th of the model's layers for one
 * micro-batch: one value for every P-th, or P values in depth order. A
 * schedule with v chunks per rank cuts the model into S = vP stages, so a
 * stage gets 1/v of its P-th: zbv's chunks cost half of 1f1b's stages, as they
 * hold half the layers. "per layer" takes one value per layer (L values, L a
 * multiple of S) and gives each stage the sum of its L/S layers. "per stage"
 * is the old reading: one value, or one per stage as each schedule cuts it, so
 * a V schedule models a model v times as big.
 *
 * Memory is in micro-batch-equivalents: the activations one micro-batch leaves
 * on one P-th of the model. A chunk of 1/v of a P-th holds 1/v of that ("per
 * stage": 1). Parameter bytes per stage get the same share as F. */
var ConveyorCosts = (function () {
  "use strict";

  function CostError(message, field) { this.message = message; this.field = field; }
  CostError.prototype = Object.create(Error.prototype);

  function parseList(text, what, field, allowInf) {
    var parts = String(text).split(",").map(function (x) { return x.trim(); }).filter(Boolean);
    if (!parts.length) throw new CostError(what + " is empty: give a number, e.g. 1", field);
    return parts.map(function (x) {
      var v = /^inf(inity)?$/i.test(x) ? Infinity : Number(x);
      if (!(v >= 0) || (v === Infinity && !allowInf)) {
        throw new CostError(what + " " + JSON.stringify(x) + " is not a number >= 0", field);
      }
      return v;
    });
  }

  var UNITS = {
    model: "per P-th of the model (each schedule's stages get their share)",
    layer: "per layer (L values; each stage sums its L/S layers)",
    stage: "per stage, as each schedule cuts the model (V schedules: a bigger model)"
  };

  // Per-stage values for S stages on P ranks from the typed list `xs`.
  // Throws a CostError naming the field and the counts it takes.
  // L: the layer count in "per layer" (the longest of the F, I, W lists), so
  // that one value there means every layer costs it.
  function perStage(xs, S, P, unit, what, field, L) {
    var n = xs.length, s, out = [];
    if (unit === "stage") {
      if (n === 1) return new Array(S).fill(xs[0]);
      if (n === S) return xs.slice();
      throw new CostError(what + " has " + n + " values but this schedule has " + S +
        " stages: give 1 or " + S + " (or count per P-th of the model)", field);
    }
    if (unit === "layer") {
      if (n === 1 && L > 1) xs = new Array(n = L).fill(xs[0]);
      if (n % S) {
        throw new CostError(what + " has " + n + " layers, which do not split into " + S +
          " equal stages: give a multiple of " + S + " values", field);
      }
      var per = n / S;
      for (s = 0; s < S; s++) {
        var sum = 0;
        for (var j = s * per; j < (s + 1) * per; j++) sum += xs[j];
        out.push(sum);
      }
      return out;
    }
    var v = S / P;  // chunks per rank: a stage is 1/v of a P-th of the model
    if (n !== 1 && n !== P) {
      throw new CostError(what + " has " + n + " values: give 1, or " + P + " (one per P-th of the model, " +
        "in depth order); for one per stage choose \"per stage\"", field);
    }
    for (s = 0; s < S; s++) out.push((n === 1 ? xs[0] : xs[Math.floor(s / v)]) / v);
    return out;
  }

  // What one micro-batch of each stage holds, in micro-batch-equivalents.
  function memoryWeights(S, P, unit) {
    return new Array(S).fill(unit === "stage" ? 1 : P / S);
  }

  // The typed costs resolved for one schedule with S stages on P ranks, in
  // the form ConveyorReplay.costTable takes: per-stage f, i, w, pbytes.
  // rounds (the decode schedule): its S stages are `rounds` passes over the
  // model, each stage a whole stage of its round, costed as S / rounds stages.
  function forSchedule(c, S, P, rounds) {
    if (rounds > 1) {
      var one = forSchedule(c, S / rounds, P), tile = function (xs) {
        return Array.from({ length: S }, function (_, s) { return xs[s % xs.length]; });
      };
      return Object.assign(one, { f: tile(one.f), i: tile(one.i), w: tile(one.w),
        pbytes: tile(one.pbytes), weight: tile(one.weight) });
    }
    var unit = c.unit || "model", L = Math.max(c.f.length, c.i.length, c.w.length), cuts = Math.max(S - 1, 0);
    var bytes = c.bytes || [0];
    if (bytes.length !== 1 && bytes.length !== cuts) {
      throw new CostError("activation bytes has " + bytes.length + " values but this schedule has " + cuts +
        " cuts between its " + S + " stages: give 1 or " + cuts, "cost-bytes");
    }
    return Object.assign({}, c, {
      f: perStage(c.f, S, P, unit, "F", "cost-F", L),
      i: perStage(c.i, S, P, unit, "I", "cost-I", L),
      w: perStage(c.w, S, P, unit, "W", "cost-W", L),
      pbytes: perStage(c.pbytes || [0], S, P, unit, "parameter bytes", "cost-pbytes", L),
      weight: memoryWeights(S, P, unit)
    });
  }

  return { CostError: CostError, parseList: parseList, perStage: perStage, forSchedule: forSchedule,
    memoryWeights: memoryWeights, UNITS: UNITS };
}());
