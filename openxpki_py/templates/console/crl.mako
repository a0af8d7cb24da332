<%inherit file="../base.mako"/>
<%block name="page_title">Revocation and CRL</%block>
<h1>Certificate revocation list</h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
% if crl is None:
<p id="crl-none">No CRL has been issued yet.</p>
% else:
<dl class="facts" id="crl-facts">
  <dt>CRL number</dt><dd id="crl-number">${crl.number}</dd>
  <dt>This update</dt><dd>${crl.this_update.strftime("%Y-%m-%d %H:%M:%S")} UTC</dd>
  <dt>Next update</dt><dd>${crl.next_update.strftime("%Y-%m-%d %H:%M:%S")} UTC${" — OVERDUE" if crl.overdue else ""}</dd>
  <dt>Entries</dt><dd id="crl-entries">${crl.entries}</dd>
  <dt>Changes since</dt><dd id="crl-changes">${crl.changed_since}${" (the next CRL will differ)" if crl.changed_since else ""}</dd>
</dl>
<p><a href="${url_for('console_crl_download')}">Download the current CRL (DER)</a></p>
% endif
% if may_issue:
<form method="post" action="${url_for('console_crl')}" class="actions">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <button type="submit" id="issue-crl">Issue a CRL now</button>
</form>
% else:
<p>Issuing a CRL out of schedule is for the CA Operator.</p>
% endif
<p>To revoke a certificate, open it (search, or <code>/console/certificates/SERIAL</code>) and choose a reason.</p>
