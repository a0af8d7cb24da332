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
<%def name="escrow_table(records, table_id)">
## Escrow records: who, which key (its SPKI SHA-256), which certificate; never key material.
<table class="escrow" id="${table_id}">
  <thead><tr><th scope="col">Record</th><th scope="col">Owner</th><th scope="col">Type</th><th scope="col">Key (SPKI SHA-256)</th>
    <th scope="col">Certificate</th><th scope="col">Created (UTC)</th><th scope="col">Status</th></tr></thead>
  <tbody>
  % for r in records:
    <tr class="escrow-record" data-escrow-id="${r['id']}"><td><a href="${url_for('console_escrow_record', escrow_id=r['id'])}">${r["id"]}</a></td>
      <td>${r["owner"]}</td><td>${r["cert_type"]} (${r["key_spec"]})</td><td><code>${r["public_key_sha256"][:16]}…</code></td>
      <td>\
% if r["certificate_serial"]:
<code>${r["certificate_serial"]}</code>\
% else:
—\
% endif
</td><td>${when(r["created_at"])}</td>
      <td class="status">${r["status"]}${" (recovered " + r["recovered_at"].strftime("%Y-%m-%d") + ")" if r["recovered_at"] else ""}</td></tr>
  % endfor
  </tbody>
</table>
</%def>
<%def name="recovery_table(requests, table_id, officer, login)">
<table class="recoveries" id="${table_id}">
  <thead><tr><th scope="col">Request</th><th scope="col">Record</th><th scope="col">Owner</th><th scope="col">Asked by</th>
    <th scope="col">Reason</th><th scope="col">Approvals</th><th scope="col">State</th><th scope="col"></th></tr></thead>
  <tbody>
  % for q in requests:
    <tr class="recovery" data-recovery-id="${q.id}"><td>${q.id}</td>
      <td><a href="${url_for('console_escrow_record', escrow_id=q.escrow_id)}">${q.escrow_id}</a></td>
      <td>${q.owner}</td><td>${q.requested_by}</td><td>${q.reason}</td>
      <td>${len(q.approvals)} of ${q.approvals_required}${": " + ", ".join(a.get("by", "") for a in q.approvals) if q.approvals else ""}</td>
      <td class="status">${q.state}\
% if q.state == "READY_FOR_OWNER":
<br><span class="handoff">released to ${q.owner} by ${q.released["by"] if q.released else "?"}; waiting for ${q.owner} to collect it${(" until " + q.collect_by.strftime("%Y-%m-%d %H:%M") + " UTC") if q.collect_by else ""}</span>\
% elif q.state == "COLLECTED":
<br><span class="handoff">collected by ${q.owner} at ${(q.collected_at or "")[:19].replace("T", " ")} UTC</span>\
% elif q.state == "EXPIRED":
<br><span class="handoff">not collected by ${q.owner} in time</span>\
% elif q.state == "WITHDRAWN":
<br><span class="handoff">release withdrawn before ${q.owner} collected it</span>\
% endif
</td>
      <td>
  % if officer and q.state == "PENDING_APPROVAL" and q.owner != login and not q.approved_by(login):
      <form method="post" action="${url_for('console_recovery_approve', wf_id=q.id)}" class="actions approve-form">
        <input type="hidden" name="csrf_token" value="${csrf_token}">
        <input type="text" name="comment" maxlength="1000" aria-label="Comment (optional)" placeholder="comment (optional)">
        <button type="submit">Approve</button>
      </form>
  % elif officer and q.state == "APPROVED":
      <form method="post" action="${url_for('console_recovery_release', wf_id=q.id)}" class="actions release-form">
        <input type="hidden" name="csrf_token" value="${csrf_token}">
        <label><input type="checkbox" name="confirm" value="yes" required> release to ${q.owner} now</label>
        <button type="submit">Release to ${q.owner}</button>
      </form>
  % elif officer and q.state == "READY_FOR_OWNER":
      <form method="post" action="${url_for('console_recovery_withdraw', wf_id=q.id)}" class="actions withdraw-form">
        <input type="hidden" name="csrf_token" value="${csrf_token}">
        <input type="text" name="reason" maxlength="1000" required aria-label="Reason for the withdrawal (required)" placeholder="reason (required)">
        <button type="submit">Withdraw the release</button>
      </form>
  % endif
      </td></tr>
  % endfor
  </tbody>
</table>
</%def>
