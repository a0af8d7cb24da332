<%inherit file="../base.mako"/>
<%block name="page_title">Certificate ${cert["serial"]}</%block>
<h1>Certificate <code>${cert["serial"]}</code></h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
<dl class="facts" id="certificate-facts">
  <dt>Status</dt><dd class="cert-status">${cert["status"]}${(" (" + cert["revocation_reason"] + ")") if cert["revocation_reason"] else ""}\
% if cert["revoked_at"]:
 since ${cert["revoked_at"].strftime("%Y-%m-%d %H:%M:%S")} UTC\
% endif
</dd>
  <dt>Subject</dt><dd class="subject">${cert["subject"]}</dd>
  <dt>Issuer</dt><dd>${cert["issuer"]}</dd>
  <dt>Profile</dt><dd>${cert["profile"]}</dd>
  <dt>Valid</dt><dd>${cert["not_before"].strftime("%Y-%m-%d %H:%M")} – ${cert["not_after"].strftime("%Y-%m-%d %H:%M")} UTC</dd>
  <dt>Owner</dt><dd>\
% if cert["owner"]:
<a href="${url_for('console_person', login=cert['owner'])}">${cert["owner"]}</a>\
% else:
—\
% endif
</dd>
  <dt>Card</dt><dd>\
% if card is not None:
<a href="${url_for('console_card', serial=card['serial'])}">${card["serial"]}</a> (${card["status"]})\
% else:
—\
% endif
</dd>
  <dt>Key origin</dt><dd>${cert["key_origin"] or "—"}</dd>
  <dt>Workflow</dt><dd>\
% if cert["workflow_id"] is not None:
<a href="${url_for('console_workflow', wf_id=cert['workflow_id'])}">${cert["workflow_id"]}</a>\
% else:
—\
% endif
</dd>
</dl>
<p><a href="${url_for('console_certificate_pem', serial=cert['serial'])}" id="download-pem">Download (PEM)</a></p>
% if may_revoke and cert["status"] == "valid":
<form method="get" action="${url_for('console_revoke', serial=cert['serial'])}" class="actions" id="revoke-form">
  <h2>Revoke or suspend</h2>
  <label for="reason">Reason (RFC 5280)</label>
  <select id="reason" name="reason">
    % for r in reasons:
    <option value="${r}">${r}${" (suspend: can be released)" if r == "certificateHold" else ""}</option>
    % endfor
  </select>
  <label for="comment">Comment (kept in the audit trail)</label>
  <input type="text" id="comment" name="comment" maxlength="1000">
  <button type="submit">Revoke…</button>
</form>
% elif may_revoke and cert["revocation_reason"] == "certificateHold":
<form method="post" action="${url_for('console_release_hold', serial=cert['serial'])}" class="actions" id="release-form">
  <h2>On hold</h2>
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <label for="release-comment">Comment (kept in the audit trail)</label>
  <input type="text" id="release-comment" name="comment" maxlength="1000">
  <button type="submit" id="release-hold">Release the hold</button>
</form>
<form method="get" action="${url_for('console_revoke', serial=cert['serial'])}" class="actions" id="revoke-form">
  <label for="reason">Revoke for good, reason</label>
  <select id="reason" name="reason">
    % for r in reasons:
      % if r != "certificateHold":
    <option value="${r}">${r}</option>
      % endif
    % endfor
  </select>
  <input type="hidden" name="comment" value="">
  <button type="submit">Revoke…</button>
</form>
% endif
