<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Stuck work</%block>
<h1>Workflows that need an operator</h1>
% if message:
<p class="status" role="status">${message}</p>
% endif
<p>In exception (retries used up), or past their deadline with an error. Open one to see its context and history, then retry it or end it with a comment.</p>
% if queue.items:
<table class="workflows" id="stuck-queue">
  <thead><tr><th scope="col">Id</th><th scope="col">Type</th><th scope="col">State</th><th scope="col">Processing</th>
    <th scope="col">Attempts</th><th scope="col">Error</th><th scope="col">Since (UTC)</th></tr></thead>
  <tbody>
  % for w in queue.items:
    <tr><td><a href="${url_for('console_workflow', wf_id=w['id'])}">${w["id"]}</a></td><td>${w["wf_type"]}</td><td>${w["state"]}</td>
      <td>${w["proc_state"]}</td><td>${w["retry_count"]}</td><td class="error">${w["last_error"] or ""}</td><td>${parts.when(w["updated_at"])}</td></tr>
  % endfor
  </tbody>
</table>
${parts.pager(queue, "console_stuck")}
% else:
<p id="queue-empty">Nothing is stuck.</p>
% endif
