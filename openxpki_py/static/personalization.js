// Follows the personalization: polls the workflow's status and reloads the
// page (with GET, so a form is never re-sent) when the workflow moved on or
// an agent connected.  A page that shows an enrollment code ends that code
// when it is left (best effort: a crash sends nothing; the code's short life
// and single use are the real bound).
(function () {
  "use strict";
  var root = document.getElementById("personalization");
  if (!root) { return; }
  var version = root.getAttribute("data-version");
  var agent = root.getAttribute("data-agent") || "";
  var statusUrl = root.getAttribute("data-status-url");
  var pageUrl = root.getAttribute("data-page-url");
  var discardUrl = root.getAttribute("data-discard-url");
  if (discardUrl) {
    window.addEventListener("pagehide", function () {
      var form = new FormData();
      form.append("csrf_token", root.getAttribute("data-csrf"));
      navigator.sendBeacon(discardUrl, form);
    });
  }
  function poll() {
    fetch(statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (s && (String(s.version) !== version || (s.agent || "") !== agent)) {
          window.location.assign(pageUrl);
          return;
        }
        window.setTimeout(poll, 1000);
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  window.setTimeout(poll, 1000);
}());
