<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Audit log</%block>
<h1>Audit log</h1>
% if message:
<p class="status" role="status" id="audit-message">${message}</p>
% endif
<form method="post" action="${url_for('audit_verify')}">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <button type="submit" id="verify-chain">Verify the chain</button>
</form>
<form method="get" action="${url_for('console_audit')}" class="search" role="search" id="audit-search">
  <label for="actor">Who (login)</label><input type="text" id="actor" name="actor" value="${args.get('actor', '')}" maxlength="256">
  <label for="event">What (event, or a prefix with *)</label><input type="text" id="event" name="event" value="${args.get('event', '')}" maxlength="64" placeholder="cert.*">
  <label for="target">About (serial, card, workflow:ID)</label><input type="text" id="target" name="target" value="${args.get('target', '')}" maxlength="256">
  <label for="outcome">Outcome</label>
  <select id="outcome" name="outcome">
    % for o in ("", "ok", "refused", "failed"):
    <option value="${o}" ${"selected" if args.get("outcome", "") == o else ""}>${o or "any"}</option>
    % endfor
  </select>
  <label for="since">From (YYYY-MM-DD)</label><input type="text" id="since" name="since" value="${args.get('since', '')}" maxlength="40">
  <label for="until">Until</label><input type="text" id="until" name="until" value="${args.get('until', '')}" maxlength="40">
  <button type="submit">Search</button>
</form>
<p>Export what matches:
  <a id="export-csv" href="${url_for('console_audit_export', format='csv', **flt.as_args())}">CSV</a>,
  <a id="export-jsonl" href="${url_for('console_audit_export', format='jsonl', **flt.as_args())}">JSON Lines</a>
  (each row with its hashes, so the chain can be checked outside the server).</p>
<table class="audit" id="audit-rows">
  <thead><tr><th scope="col">#</th><th scope="col">Time (UTC)</th><th scope="col">Actor</th><th scope="col">Role</th>
    <th scope="col">Event</th><th scope="col">Outcome</th><th scope="col">Target</th></tr></thead>
  <tbody>
  % for row in rows.items:
    <tr><td>${row['id']}</td><td>${parts.when(row['logged_at'])}</td><td>${row['actor']}</td>
      <td>${row['role_name'] or ''}</td><td>${row['event']}</td><td>${row['outcome']}</td><td>${row['target'] or ''}</td></tr>
  % endfor
  </tbody>
</table>
${parts.pager(rows, "console_audit", **flt.as_args())}
