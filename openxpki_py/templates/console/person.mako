<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">${login}</%block>
<h1>${entry.get("cn") if entry is not None and entry.get("cn") else login}</h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
<dl class="facts" id="person-facts">
  <dt>Login</dt><dd>${login}</dd>
  % if entry is not None:
  <dt>Mail</dt><dd>${entry.get("mail") or "—"}</dd>
  <dt>Directory entry</dt><dd>${entry.dn}</dd>
  % else:
  <dt>Directory</dt><dd>not found (left the company, or the directory did not answer)</dd>
  % endif
</dl>
<h2>Cards</h2>
% if cards:
<table class="cards" id="person-cards">
  <thead><tr><th scope="col">Serial</th><th scope="col">Model</th><th scope="col">Status</th><th scope="col">Last seen (UTC)</th></tr></thead>
  <tbody>
  % for c in cards:
    <tr><td><a href="${url_for('console_card', serial=c['serial'])}">${c["serial"]}</a></td><td>${c["model"] or ""}</td>
      <td class="status">${c["status"]}</td><td>${parts.when(c["last_seen"])}</td></tr>
  % endfor
  </tbody>
</table>
% else:
<p>No cards.</p>
% endif
<h2>Certificates</h2>
% if certs.items:
${parts.cert_table(certs.items, "person-certificates")}
${parts.pager(certs, "console_person", param="cpage", login=login)}
% else:
<p>No certificates.</p>
% endif
<p><a href="${url_for('console_escrow', owner=login)}" id="person-escrow">Escrowed keys of ${login}</a></p>
<h2>Workflows</h2>
% if flows.items:
${parts.workflow_table(flows.items, "person-workflows")}
${parts.pager(flows, "console_person", param="wpage", login=login)}
% else:
<p>No workflows.</p>
% endif
