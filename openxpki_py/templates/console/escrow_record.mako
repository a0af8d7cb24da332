<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Escrowed key ${record["id"]}</%block>
<h1>Escrowed key ${record["id"]}</h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
<dl class="facts" id="escrow-facts">
  <dt>Owner</dt><dd><a href="${url_for('console_escrow', owner=record['owner'])}">${record["owner"]}</a></dd>
  <dt>Type</dt><dd>${record["cert_type"]} (profile ${record["profile"]}, ${record["key_spec"]})</dd>
  <dt>Key (SPKI SHA-256)</dt><dd><code>${record["public_key_sha256"]}</code></dd>
  <dt>Certificate</dt><dd>${record["certificate_serial"] or "—"}</dd>
  <dt>Status</dt><dd class="status">${record["status"]}</dd>
  <dt>Created (UTC)</dt><dd>${parts.when(record["created_at"])}</dd>
  <dt>Installed on a card (UTC)</dt><dd>${parts.when(record["installed_at"])}</dd>
  <dt>Last recovered (UTC)</dt><dd>${parts.when(record["recovered_at"])}</dd>
</dl>
<h2>Recovery requests</h2>
% if recoveries:
${parts.recovery_table(recoveries, "record-recoveries", officer, identity.login)}
% else:
<p>None.</p>
% endif
% if officer and record["owner"] != identity.login:
<form method="post" action="${url_for('console_escrow_recover', escrow_id=record['id'])}" class="actions" id="recover-form">
  <h2>Ask for a recovery</h2>
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <label for="reason">Reason (required; kept in the audit trail: card lost, ticket number …)</label>
  <input type="text" id="reason" name="reason" maxlength="500" required>
  <button type="submit">Request recovery</button>
</form>
% endif
