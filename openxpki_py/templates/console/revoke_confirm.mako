<%inherit file="../base.mako"/>
<%block name="page_title">Confirm revocation</%block>
<h1>${"Suspend" if hold else "Revoke"} certificate <code>${cert["serial"]}</code>?</h1>
<dl class="facts">
  <dt>Subject</dt><dd class="subject">${cert["subject"]}</dd>
  <dt>Owner</dt><dd>${cert["owner"] or "—"}</dd>
  <dt>Profile</dt><dd>${cert["profile"]}</dd>
  <dt>Reason</dt><dd id="confirm-reason">${reason}</dd>
  <dt>Comment</dt><dd>${comment or "—"}</dd>
</dl>
% if hold:
<p>The certificate is put on hold (certificateHold): relying parties refuse it until the hold is released.</p>
% else:
<p><strong>This cannot be undone.</strong> Relying parties refuse the certificate from now on (OCSP at once, the CRL from the next one).</p>
% endif
<form method="post" action="${url_for('console_revoke', serial=cert['serial'])}" class="actions">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <input type="hidden" name="reason" value="${reason}">
  <input type="hidden" name="comment" value="${comment}">
  <input type="hidden" name="confirm" value="yes">
  <button type="submit" id="confirm-revoke">${"Yes, suspend it" if hold else "Yes, revoke it"}</button>
  <a href="${url_for('console_certificate', serial=cert['serial'])}">Cancel</a>
</form>
