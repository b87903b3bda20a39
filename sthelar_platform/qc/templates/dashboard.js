// Plots of the STHELAR QC dashboard. Plotly is loaded from assets/ (no network).
"use strict";
const LAYOUT = { margin: { l: 55, r: 15, t: 30, b: 45 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff", font: { size: 12 } };
const CONFIG = { responsive: true, displaylogo: false };
const QUALITY = [[0, "#b91c1c"], [0.45, "#f59e0b"], [0.7, "#facc15"], [1, "#15803d"]];  // Jaccard: red low, green high
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf", "#393b79", "#637939"];

function plot(id, traces, layout) {
  const el = document.getElementById(id);
  if (!el) return;
  if (!traces.length) { el.innerHTML = '<p class="muted" style="padding:1em">no data</p>'; el.style.minHeight = "0"; return; }
  Plotly.newPlot(el, traces, Object.assign({}, LAYOUT, layout || {}), CONFIG);
  el.dataset.rendered = "true";
}

function compositionTraces(comp) {
  const cats = Object.keys(comp.categories || {});
  return cats.map((c, i) => ({ type: "bar", orientation: "h", name: c, y: comp.slides, x: comp.slides.map(s => (comp.categories[c][s] || 0)),
    marker: { color: PALETTE[i % PALETTE.length] } }));
}

function sthelarIndex(d) {
  plot("plot-cohort", d.cohort.slide_id.length ? [{ type: "scatter", mode: "markers+text", x: d.cohort.median_residual_um,
    y: d.cohort.median_jaccard_40x, text: d.cohort.slide_id, textposition: "top center",
    marker: { size: 10, color: d.cohort.status.map(s => s === "pass" ? "#15803d" : s === "fail" ? "#b91c1c" : "#b45309") } }] : [],
    { xaxis: { title: { text: "median registration residual (µm)" } }, yaxis: { title: { text: "median Jaccard, 40x" } } });
  plot("plot-composition", compositionTraces(d.composition), { barmode: "stack", xaxis: { title: { text: "fraction of cells" } } });
  plot("plot-loss", d.loss.map((m, i) => ({ type: "scatter", mode: "lines+markers", name: m.name, x: m.epoch, y: m.val_loss,
    line: { color: PALETTE[i % PALETTE.length] } })), { xaxis: { title: { text: "epoch" } }, yaxis: { title: { text: "validation loss" } } });
}

function sthelarSlide(d) {
  plot("plot-composition", compositionTraces(d.composition), { barmode: "stack", height: 220, showlegend: true,
    xaxis: { title: { text: "fraction of cells" } } });
  const cm = d.cell_map;
  plot("plot-celltype-map", Object.keys(cm).map((c, i) => ({ type: "scattergl", mode: "markers", name: c, x: cm[c].x, y: cm[c].y,
    marker: { size: 3, color: PALETTE[i % PALETTE.length] } })),
    { title: { text: "cell types in space" + (d.cell_map_sampled ? " (sample)" : "") }, yaxis: { autorange: "reversed", scaleanchor: "x" }, xaxis: { title: { text: "x (µm)" } } });
  const g = d.patch_grid;
  plot("plot-patch-map", g.n ? [{ type: "heatmap", z: g.z, x: g.x, y: g.y, zmin: 0, zmax: 1, colorscale: QUALITY,
    hoverongaps: false, colorbar: { title: { text: "Jaccard" } } }] : [],
    { title: { text: g.n + " patches at 40x by Jaccard" }, yaxis: { autorange: "reversed", scaleanchor: "x" },
      xaxis: { title: { text: "x (px, 40x)" } } });
  const h = d.histograms;
  plot("plot-patch-hist", Object.keys(h.counts).filter(m => h.counts[m].some(c => c > 0)).map(m => ({ type: "bar",
    name: m, x: h.centers, y: h.counts[m], opacity: 0.6 })), { barmode: "overlay", bargap: 0,
    title: { text: "metric distributions, 40x" }, xaxis: { range: [0, 1] }, yaxis: { title: { text: "patches" } } });
}
