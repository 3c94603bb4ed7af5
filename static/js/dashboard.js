// The team dashboard's charts. Each <canvas data-chart="ID"> is drawn from the JSON in the
// <script type="application/json" id="ID"> beside it (json_script: no inline script, as the
// Content-Security-Policy demands). The same numbers are in the table under each chart.
(function () {
  "use strict";
  // Calm, distinguishable colours (Okabe-Ito, slightly muted), in series order.
  const COLOURS = ["#2f5d7c", "#c08a2e", "#3f8f6b", "#a0524b", "#6f6aa8", "#5b8fb0", "#8a8f45"];

  function datasets(data) {
    return data.series.map(function (series, i) {
      const colour = COLOURS[i % COLOURS.length];
      return {
        label: series.label,
        data: series.values,
        borderColor: colour,
        backgroundColor: data.kind === "bar" ? colour + "cc" : colour,
        borderWidth: data.kind === "bar" ? 0 : 2,
        pointRadius: data.labels.length > 40 ? 0 : 2,
        spanGaps: false,
        tension: 0,
      };
    });
  }

  function draw(canvas) {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source || typeof window.Chart === "undefined") return;
    const data = JSON.parse(source.textContent);
    const chart = new window.Chart(canvas, {
      type: data.kind,
      data: { labels: data.labels, datasets: datasets(data) },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        // People read these, they are not a show: no animation.
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: data.series.length > 1, position: "bottom", labels: { boxWidth: 12 } },
          tooltip: {
            callbacks: {
              label: function (item) {
                const value = item.parsed.y;
                return item.dataset.label + ": " + (value === null ? "—" : value) + (data.unit === "%" ? "%" : "");
              },
            },
          },
        },
        scales: {
          x: { ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 12, color: "#5f676d" }, grid: { display: false } },
          y: { beginAtZero: true, ticks: { precision: 0, color: "#5f676d" }, grid: { color: "#e4e7e2" } },
        },
      },
    });
    canvas.chart = chart;
  }

  function start() {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
