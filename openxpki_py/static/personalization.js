// Follows the personalization: polls the workflow's status and reloads the
// page (with GET, so a form is never re-sent) when the workflow moved on.
(function () {
  "use strict";
  var root = document.getElementById("personalization");
  if (!root) { return; }
  var version = root.getAttribute("data-version");
  var statusUrl = root.getAttribute("data-status-url");
  var pageUrl = root.getAttribute("data-page-url");
  function poll() {
    fetch(statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (s && String(s.version) !== version) { window.location.assign(pageUrl); return; }
        window.setTimeout(poll, 1000);
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  window.setTimeout(poll, 1000);
}());
