## Small pieces the console pages share (autoescaped like every page).
<%def name="when(dt)">${dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "—"}</%def>
<%def name="pager(page, endpoint, param='page', **values)">
% if page.has_previous or page.has_next:
<nav class="pager" aria-label="Pages">
  % if page.has_previous:
  <a href="${url_for(endpoint, **dict(values, **{param: page.number - 1}))}" rel="prev">Previous</a>
  % endif
  <span>Page ${page.number}</span>
  % if page.has_next:
  <a href="${url_for(endpoint, **dict(values, **{param: page.number + 1}))}" rel="next">Next</a>
  % endif
</nav>
% endif
</%def>
<%def name="cert_table(certs, table_id)">
<table class="certificates" id="${table_id}">
  <thead><tr><th scope="col">Serial</th><th scope="col">Profile</th><th scope="col">Subject</th>
    <th scope="col">Valid until</th><th scope="col">Status</th></tr></thead>
  <tbody>
  % for c in certs:
    <tr><td><a href="${url_for('console_certificate', serial=c['serial'])}"><code>${c["serial"]}</code></a></td>
      <td>${c["profile"]}</td><td>${c["subject"]}</td><td>${c["not_after"].strftime("%Y-%m-%d")}</td>
      <td class="status">${c["status"]}${(" (" + c["revocation_reason"] + ")") if c["revocation_reason"] else ""}</td></tr>
  % endfor
  </tbody>
</table>
</%def>
<%def name="workflow_table(flows, table_id)">
<table class="workflows" id="${table_id}">
  <thead><tr><th scope="col">Id</th><th scope="col">Type</th><th scope="col">State</th><th scope="col">Processing</th>
    <th scope="col">Creator</th><th scope="col">Updated (UTC)</th></tr></thead>
  <tbody>
  % for w in flows:
    <tr><td><a href="${url_for('console_workflow', wf_id=w['id'])}">${w["id"]}</a></td><td>${w["wf_type"]}</td>
      <td>${w["state"]}</td><td>${w["proc_state"]}</td><td>${w["creator"]}</td><td>${when(w["updated_at"])}</td></tr>
  % endfor
  </tbody>
</table>
</%def>
