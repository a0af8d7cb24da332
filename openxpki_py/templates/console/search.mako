<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Search</%block>
<h1>Search</h1>
% if message:
<p class="status" role="status">${message}</p>
% endif
<form method="get" action="${url_for('console_search')}" class="search" role="search">
  <label for="kind">Find</label>
  <select id="kind" name="kind">
    % for k in kinds:
    <option value="${k}" ${"selected" if k == kind else ""}>${k}</option>
    % endfor
  </select>
  <label for="q">Login, name or mail; card serial; certificate serial; workflow id or state</label>
  <input type="search" id="q" name="q" value="${q}" maxlength="256">
  <button type="submit">Search</button>
</form>
% if q and kind == "person":
  % if people:
<table id="people"><thead><tr><th scope="col">Login</th><th scope="col">Name</th><th scope="col">Mail</th></tr></thead>
  <tbody>
  % for p in people:
    <tr><td><a href="${url_for('console_person', login=p.login)}">${p.login}</a></td><td>${p.name or ("(not in the directory)" if not p.in_directory else "")}</td><td>${p.mail}</td></tr>
  % endfor
  </tbody></table>
  % else:
<p id="no-results">Nobody matches.</p>
  % endif
% elif workflows is not None:
  % if workflows.items:
${parts.workflow_table(workflows.items, "workflow-results")}
${parts.pager(workflows, "console_search", q=q, kind=kind)}
  % else:
<p id="no-results">No workflow is in that state.</p>
  % endif
% endif
