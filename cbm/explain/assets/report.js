/* Test-time intervention, computed in the page from the head weights embedded as JSON:
   logit_k = bias_k + sum_j weight_kj * value_j, with the values the reader overrides (a concept's
   standardised score, or its probability where the model calibrates it; present / absent set it to
   the levels embedded beside it). */
(function () {
  "use strict";
  var source = document.getElementById("cbm-data");
  if (!source) { return; }
  var d = JSON.parse(source.textContent);
  var overrides = {};
  document.documentElement.className += " js";

  function probabilities() {
    var logits = d.intercept.map(function (bias, k) {
      var s = bias;
      for (var j = 0; j < d.concepts.length; j++) {
        s += d.weights[k][j] * (overrides.hasOwnProperty(j) ? overrides[j] : d.scores[j]);
      }
      return s;
    });
    var top = Math.max.apply(null, logits);
    var e = logits.map(function (v) { return Math.exp(v - top); });
    var total = e.reduce(function (a, b) { return a + b; }, 0);
    return e.map(function (v) { return v / total; });
  }

  // as the report writes probabilities: whole percent, ">99 %" and "<1 %" at the ends
  function percent(p) { return p > 0.99 ? ">99 %" : p < 0.01 ? "<1 %" : (100 * p).toFixed(0) + " %"; }
  function width(p) { return (100 * p).toFixed(1) + "%"; }

  function update() {
    var p = probabilities();
    var best = 0;
    for (var k = 1; k < p.length; k++) { if (p[k] > p[best]) { best = k; } }
    var rows = document.querySelectorAll("[data-after-class]");
    for (var i = 0; i < rows.length; i++) {
      var c = +rows[i].getAttribute("data-after-class");
      rows[i].setAttribute("data-p", String(p[c]));
      rows[i].querySelector(".bar > span").style.width = width(p[c]);
      rows[i].querySelector(".value").textContent = percent(p[c]);
    }
    var n = Object.keys(overrides).length;
    var summary = document.getElementById("after-summary");
    summary.setAttribute("data-predicted", d.classes[best]);
    summary.setAttribute("data-changes", String(n));
    summary.textContent = n === 0
      ? "No changes yet: the prediction is as seen."
      : "With your " + n + (n === 1 ? " change" : " changes") + ": " + d.classes[best] + " (" + percent(p[best]) + ")";
  }

  var inputs = document.querySelectorAll("input[data-concept]");
  for (var i = 0; i < inputs.length; i++) {
    inputs[i].addEventListener("change", function (event) {
      var input = event.target;
      var j = +input.getAttribute("data-concept");
      if (input.value === "present") { overrides[j] = d.present[j]; }
      else if (input.value === "absent") { overrides[j] = d.absent[j]; }
      else { delete overrides[j]; }
      update();
    });
  }
  var reset = document.getElementById("reset-interventions");
  if (reset) {
    reset.addEventListener("click", function () {
      overrides = {};
      var seen = document.querySelectorAll("input[data-concept][value=seen]");
      for (var i = 0; i < seen.length; i++) { seen[i].checked = true; }
      update();
    });
  }
  update();
})();
