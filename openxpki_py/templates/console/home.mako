<%inherit file="../base.mako"/>
<%block name="page_title">Operators' console</%block>
<h1>Operators' console</h1>
% if message:
<p class="status" role="status">${message}</p>
% endif
<ul class="console-tasks">
  % if may("console.search"):
  <li><a href="${url_for('console_search')}">Search</a>: people, cards, certificates, workflows</li>
  % endif
  <li><a href="${url_for('console_crl')}">Revocation and CRL</a>: the current CRL${", issue one now" if may("crl.issue") else ""}</li>
  % if may("workflow.retry"):
  <li><a href="${url_for('console_stuck')}">Stuck work</a>: workflows that need an operator</li>
  % endif
  <li><a href="${url_for('audit_log')}">Audit log</a>: search, export, verify the chain</li>
</ul>
