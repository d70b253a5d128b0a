//! One self-contained HTML page: the flame graph (click to zoom, search)
//! and a chart of outstanding bytes over time for the top stacks.
//!
//! Everything is inline (data, script, style) so the file can be mailed or
//! attached to a ticket and opened anywhere, offline: no fetch, no font or
//! script from a CDN. The page is also well-formed XML (XHTML syntax, script
//! in CDATA), so tests and tools can parse it without a browser.

use serde_json::{json, Value};

use crate::flame::{tree, Node};
use crate::model::{Kind, Model};

/// Most stacks drawn as lines in the chart.
const CHART_STACKS: usize = 8;

fn node_json(name: &str, n: &Node) -> Value {
    let children: Vec<Value> = n.children.iter().map(|(k, c)| node_json(k, c)).collect();
    json!([name, n.value, n.growing, children])
}

/// The chart's series: total, and the stacks that matter most at the end
/// (growing ones first, then by outstanding bytes).
fn series(model: &Model) -> Value {
    let points = &model.history;
    let ts: Vec<f64> = points.iter().map(|p| p.ts_ns as f64 / 1e9).collect();
    let total: Vec<u64> = points.iter().map(|p| p.total_bytes).collect();
    let mut ranked: Vec<(u32, u64, bool)> = model
        .selected
        .as_ref()
        .map(|s| s.1.iter().map(|(id, v)| (*id, v.bytes, v.growing)).collect())
        .unwrap_or_default();
    ranked.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)));
    ranked.truncate(CHART_STACKS);
    let stacks: Vec<Value> = ranked
        .iter()
        .map(|&(id, _, growing)| {
            let values: Vec<Option<u64>> = points
                .iter()
                .map(|p| p.stacks.iter().find(|(s, _)| *s == id).map(|(_, b)| *b))
                .collect();
            json!({
                "label": model.stack_label(id),
                "stack": model.names_root_first(id).join(" ← "),
                "growing": growing,
                "values": values,
            })
        })
        .collect();
    json!({"ts": ts, "total": total, "stacks": stacks})
}

/// JSON that is safe inside a `<script>` element and inside XML: `<`, `>`
/// and `&` as unicode escapes (still the same JSON).
fn script_json(v: &Value) -> String {
    v.to_string().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

pub fn page(model: &Model, title: &str) -> String {
    let root = tree(model);
    let kind = match model.kind() {
        Kind::InUse => "outstanding",
        Kind::Alloc => "allocated",
    };
    let data = json!({
        "title": title,
        "kind": kind,
        "pid": model.pid,
        "reports": model.reports,
        "flame": node_json("all", &root),
        "series": series(model),
    });
    let title = crate::flame::xml_escape(title);
    format!(
        r##"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"/>
<title>{title}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<p id="summary"></p>
<h2>Flame graph of {kind} bytes</h2>
<div class="controls"><input id="search" type="search" placeholder="search functions (regex)"/> <button id="reset" type="button">reset zoom</button> <span id="matched"></span></div>
<div id="flame"></div>
<div id="details">&#160;</div>
<h2>Outstanding bytes over time</h2>
<div id="chart"></div>
<script id="data" type="application/json">{data}</script>
<script>//<![CDATA[
{SCRIPT}
//]]></script>
</body>
</html>
"##,
        data = script_json(&data),
    )
}

const STYLE: &str = r##"
body { font-family: Verdana, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
#flame { position: relative; width: 100%; background: #f8f8f8; border: 1px solid #ddd; }
.frame { position: absolute; height: 17px; line-height: 17px; font-size: 12px; overflow: hidden;
  white-space: nowrap; text-overflow: ellipsis; box-sizing: border-box; border: 1px solid #f8f8f8;
  border-radius: 2px; padding-left: 3px; cursor: pointer; }
.frame:hover { border-color: #000; }
.frame.growing { color: #fff; }
.frame.match { background: #e040e0 !important; }
.frame.dim { opacity: 0.45; }
#details { font-size: 12px; min-height: 1.4em; margin-top: 4px; }
#chart svg { width: 100%; max-width: 1100px; height: auto; font-size: 12px; }
.series { fill: none; stroke-width: 1.5; }
.series.growing { stroke-width: 3.5; }
.legend.growing { font-weight: bold; }
.controls { margin-bottom: 6px; }
"##;

const SCRIPT: &str = r##"
"use strict";
var data = JSON.parse(document.getElementById("data").textContent);
var flame = document.getElementById("flame");
var details = document.getElementById("details");
var ROW = 18;
function human(b) {
  var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = Math.abs(b);
  while (v >= 1024 && i + 1 < u.length) { v /= 1024; i++; }
  return (b < 0 ? "-" : "") + (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
}
function hue(name, growing) {
  var h = 2166136261;
  for (var i = 0; i < name.length; i++) { h = Math.imul(h ^ name.charCodeAt(i), 16777619) >>> 0; }
  var a = h % 256, b = (h >>> 8) % 256;
  if (growing) { return "rgb(" + (40 + a % 60) + "," + (90 + b % 70) + ",220)"; }
  return "rgb(" + (205 + a % 50) + "," + (80 + b % 130) + "," + (40 + a % 40) + ")";
}
function depth(n) {
  var d = 0;
  n[3].forEach(function (c) { d = Math.max(d, 1 + depth(c)); });
  return d;
}
var rootNode = data.flame, total = rootNode[1], zoomed = [rootNode];
function isGrowing(n) { return n[2] > 0 && n[2] * 2 >= n[1]; }
function render() {
  flame.textContent = "";
  if (total === 0) {
    flame.style.height = "2em";
    flame.textContent = "no samples";
    return;
  }
  var focus = zoomed[zoomed.length - 1];
  var levels = zoomed.length - 1 + depth(focus) + 1;
  flame.style.height = (levels * ROW + 2) + "px";
  function box(n, d, left, width, dim) {
    if (width < 0.02) { return; }
    var el = document.createElement("div");
    el.className = "frame" + (isGrowing(n) ? " growing" : "") + (dim ? " dim" : "");
    el.style.left = left + "%";
    el.style.width = width + "%";
    el.style.top = ((levels - 1 - d) * ROW) + "px";
    el.style.background = hue(n[0], isGrowing(n));
    el.setAttribute("data-bytes", String(n[1]));
    var tip = n[0] + ": " + n[1] + " bytes (" + (100 * n[1] / total).toFixed(2) + "%)";
    if (n[2] > 0) { tip += ", " + n[2] + " bytes in growing stacks"; }
    el.title = tip;
    el.textContent = n[0];
    el.onclick = function () { zoom(n); };
    el.onmouseover = function () { details.textContent = tip; };
    flame.appendChild(el);
    return el;
  }
  for (var i = 0; i < zoomed.length - 1; i++) { box(zoomed[i], i, 0, 100, true); }
  (function walk(n, d, left, width) {
    box(n, d, left, width, false);
    var x = left;
    n[3].forEach(function (c) {
      var w = width * c[1] / n[1];
      walk(c, d + 1, x, w);
      x += w;
    });
  })(focus, zoomed.length - 1, 0, 100);
  search();
}
function path(target) {
  var found = null;
  (function walk(n, trail) {
    if (found) { return; }
    trail = trail.concat([n]);
    if (n === target) { found = trail; return; }
    n[3].forEach(function (c) { walk(c, trail); });
  })(rootNode, []);
  return found || [rootNode];
}
function zoom(n) { zoomed = path(n); render(); }
function search() {
  var q = document.getElementById("search").value, re = null, sum = 0;
  try { re = q ? new RegExp(q) : null; } catch (e) { re = null; }
  Array.prototype.forEach.call(flame.querySelectorAll(".frame"), function (el) {
    var m = re !== null && re.test(el.textContent);
    el.classList.toggle("match", m);
  });
  if (re !== null) {
    (function walk(n) {
      if (re.test(n[0])) { sum += n[1]; return; }
      n[3].forEach(walk);
    })(rootNode);
    document.getElementById("matched").textContent =
      "matched " + human(sum) + " (" + (100 * sum / Math.max(total, 1)).toFixed(1) + "%)";
  } else {
    document.getElementById("matched").textContent = "";
  }
}
document.getElementById("search").oninput = search;
document.getElementById("reset").onclick = function () { zoomed = [rootNode]; render(); };

var summary = data.reports > 0
  ? data.reports + " report(s); " + human(total) + " outstanding in the shown report"
  : human(total) + " allocated";
if (data.pid !== null) { summary = "pid " + data.pid + ": " + summary; }
document.getElementById("summary").textContent = summary;

function chart() {
  var s = data.series, host = document.getElementById("chart");
  var NS = "http://www.w3.org/2000/svg";
  if (s.ts.length === 0) { host.textContent = "no leak reports in the input"; return; }
  var W = 1000, H = 320, L = 80, R = 260, T = 10, B = 30;
  var svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  function el(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    svg.appendChild(e);
    return e;
  }
  var t0 = s.ts[0], t1 = s.ts[s.ts.length - 1], span = Math.max(t1 - t0, 1e-9);
  var max = 1;
  s.total.forEach(function (v) { max = Math.max(max, v); });
  s.stacks.forEach(function (st) { st.values.forEach(function (v) { if (v !== null) { max = Math.max(max, v); } }); });
  function X(t) { return L + (W - L - R) * (s.ts.length > 1 ? (t - t0) / span : 0.5); }
  function Y(v) { return H - B - (H - T - B) * v / max; }
  el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888"});
  el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#888"});
  [0, 0.5, 1].forEach(function (f) {
    el("text", {x: L - 6, y: Y(max * f) + 4, "text-anchor": "end"}, human(max * f));
  });
  el("text", {x: L, y: H - 8}, "0 s");
  el("text", {x: W - R, y: H - 8, "text-anchor": "end"}, (t1 - t0).toFixed(1) + " s");
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  var lines = [{label: "total", values: s.total, growing: false, colour: "#444", stack: "all stacks"}];
  s.stacks.forEach(function (st, i) {
    lines.push({label: st.label, values: st.values, growing: st.growing,
      colour: st.growing ? "#d62728" : palette[i % palette.length], stack: st.stack});
  });
  lines.forEach(function (ln, i) {
    var pts = [];
    ln.values.forEach(function (v, j) { if (v !== null) { pts.push(X(s.ts[j]).toFixed(1) + "," + Y(v).toFixed(1)); } });
    var cls = "series" + (ln.growing ? " growing" : "");
    var p = el("polyline", {"class": cls, points: pts.join(" "), stroke: ln.colour,
      "stroke-dasharray": i === 0 ? "4 3" : "none", "data-label": ln.label});
    var tip = document.createElementNS(NS, "title");
    tip.textContent = ln.label + (ln.growing ? " (growing)" : "") + ": " + ln.stack;
    p.appendChild(tip);
    pts.forEach(function (pt) {
      var xy = pt.split(",");
      el("circle", {cx: xy[0], cy: xy[1], r: ln.growing ? 3 : 2, fill: ln.colour});
    });
    var last = ln.values[ln.values.length - 1];
    el("text", {"class": "legend" + (ln.growing ? " growing" : ""), x: W - R + 12, y: T + 14 + 18 * i,
      fill: ln.colour}, (ln.growing ? "\u25b2 " : "") + ln.label + " " + (last === null ? "-" : human(last)));
  });
  host.appendChild(svg);
}
// A link can carry a search and a zoom: page.html#search=REGEX&zoom=FUNCTION
// (the heaviest frame of that name).
(function fromHash() {
  var params = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var i = kv.indexOf("=");
    if (i > 0) { params[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); }
  });
  if (params.search !== undefined) { document.getElementById("search").value = params.search; }
  if (params.zoom !== undefined) {
    var best = null;
    (function walk(n) {
      if (n[0] === params.zoom && (best === null || n[1] > best[1])) { best = n; }
      n[3].forEach(walk);
    })(rootNode);
    if (best !== null) { zoomed = path(best); }
  }
})();
render();
chart();
document.body.setAttribute("data-rendered", "yes");
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_escapes_markup() {
        let s = script_json(&json!({"a": "</script><![CDATA[&]]>"}));
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["a"], "</script><![CDATA[&]]>");
    }

    #[test]
    fn page_has_no_external_references() {
        let p = page(&Model::new(None), "t");
        assert!(!p.contains("src=\"http") && !p.contains("href=\"http"));
        assert!(!SCRIPT.contains("]]>"));
    }
}
