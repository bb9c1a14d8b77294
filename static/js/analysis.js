// The analysis page waits for its result: it polls the status endpoint every second and reloads itself
// once when the analysis finishes; on a finished page it only waits (a few minutes at most) for the PDF
// report to be written.
(function () {
  "use strict";
  var result = document.getElementById("result");
  if (!result) return;
  var url = result.dataset.statusUrl;
  var initial = result.dataset.status;
  var waitingForResult = initial === "queued" || initial === "running";
  var waitingForReport = result.dataset.reportPending === "1";
  if (!waitingForResult && !waitingForReport) return;
  var delay = 1000;
  var reportTries = 0;

  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (data) {
        delay = 1000;
        if (waitingForResult) {
          var label = document.getElementById("status");
          label.textContent = data.status_display;
          label.className = "status status-" + data.status;
          if (data.finished) {
            window.location.reload();
            return;
          }
        } else if (data.report_url) {
          var link = document.getElementById("report-link");
          link.href = data.report_url;
          link.hidden = false;
          // The FHIR record holds the report, so it is ready when the report is.
          document.getElementById("fhir-link").hidden = false;
          document.getElementById("report-pending").hidden = true;
          return;
        } else if (++reportTries > 300) {
          return; // the page says the report is being written; a reload later tells the rest
        }
        window.setTimeout(poll, delay);
      })
      .catch(function () {
        // The network or the server blinked: keep trying, more slowly.
        delay = Math.min(delay * 2, 15000);
        window.setTimeout(poll, delay);
      });
  }
  window.setTimeout(poll, delay);
})();
