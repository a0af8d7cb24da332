<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Workflow ${wf.id}</%block>
<h1>Workflow ${wf.id}: ${wf.wf_type}</h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
<dl class="facts" id="workflow-facts">
  <dt>State</dt><dd id="wf-state">${wf.state}</dd>
  <dt>Processing</dt><dd id="wf-proc-state">${wf.proc_state}</dd>
  <dt>Started by</dt><dd>${wf.creator} (${wf.role}) at ${parts.when(wf.created_at)} UTC</dd>
  % if wf.parent_id is not None:
  <dt>Part of</dt><dd><a href="${url_for('console_workflow', wf_id=wf.parent_id)}">workflow ${wf.parent_id}</a></dd>
  % endif
  <dt>Attempts</dt><dd>${wf.retry_count}</dd>
  % if wf.wake_at is not None:
  <dt>Deadline / next attempt</dt><dd>${parts.when(wf.wake_at)} UTC</dd>
  % endif
  % if wf.last_error:
  <dt>Last error</dt><dd class="error" id="wf-error">${wf.last_error}</dd>
  % endif
</dl>
% if may_retry or may_fail:
<section class="actions" id="operator-actions">
  <h2>Operator</h2>
  % if may_retry:
  <form method="post" action="${url_for('console_workflow_retry', wf_id=wf.id)}">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <label for="retry-comment">Comment</label>
    <input type="text" id="retry-comment" name="comment" maxlength="1000">
    <button type="submit" id="retry">Retry now</button>
  </form>
  % endif
  % if may_fail:
  <form method="post" action="${url_for('console_workflow_fail', wf_id=wf.id)}">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <label for="fail-comment">Reason (shown to the requester)</label>
    <input type="text" id="fail-comment" name="comment" maxlength="1000" required>
    <button type="submit" id="fail">End as failed</button>
  </form>
  % endif
</section>
% endif
<h2>Context</h2>
<table class="context" id="workflow-context">
  <tbody>
  % for key, value in wf_context.items():
    <tr><th scope="row">${key}</th><td><code>${value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)}</code></td></tr>
  % endfor
  </tbody>
</table>
<h2>History</h2>
<table class="history" id="workflow-history">
  <thead><tr><th scope="col">Time (UTC)</th><th scope="col">Action</th><th scope="col">From</th><th scope="col">To</th>
    <th scope="col">Who</th><th scope="col">Outcome</th><th scope="col">Note</th></tr></thead>
  <tbody>
  % for h in wf.history:
    <tr><td>${parts.when(h.logged_at)}</td><td>${h.action}</td><td>${h.from_state}</td><td>${h.to_state}</td>
      <td>${h.actor} (${h.role})</td><td>${h.outcome}</td><td>${h.note or ""}</td></tr>
  % endfor
  </tbody>
</table>
<%! import json %>
