<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Escrowed keys</%block>
<h1>Escrowed keys${" of " + owner if owner else ""}</h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
<p>The private keys themselves stay sealed in the HSM's custody; two different Key Recovery Officers
  must approve before one is released to its owner, and never on the owner's own approval.</p>
<form method="get" action="${url_for('console_escrow')}" class="search">
  <label for="owner">Owner (login)</label>
  <input type="text" id="owner" name="owner" value="${owner or ''}" maxlength="256">
  <button type="submit">Show</button>
</form>
<h2>Recovery requests waiting</h2>
% if pending:
${parts.recovery_table(pending, "escrow-recoveries", officer, identity.login)}
% else:
<p>None.</p>
% endif
<h2>Records</h2>
% if records:
${parts.escrow_table(records, "escrow-records")}
% else:
<p>No escrowed keys.</p>
% endif
