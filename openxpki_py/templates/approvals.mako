<%inherit file="base.mako"/>
<%block name="page_title">Approvals</%block>
<h1>Certificate requests waiting for approval</h1>
% if message:
<p class="status" role="status" id="approval-message">${message}</p>
% endif
% if not pending:
<p>Nothing is waiting for approval.</p>
% endif
% for wf in pending:
<section class="request" id="request-${wf.id}" aria-labelledby="request-${wf.id}-title">
  <h2 id="request-${wf.id}-title">Request ${wf.id}: ${wf.context.get("profile", "")} for ${wf.context.get("owner") or "—"}</h2>
  <dl class="facts">
    <dt>Subject</dt><dd class="subject">${wf.context.get("subject_dn", "")}</dd>
    <dt>Key</dt><dd>${wf.context.get("key", "")}</dd>
    <dt>Requested by</dt><dd>${wf.creator}</dd>
    <dt>Approvals</dt><dd>${len(wf.context.get("approvals", []))} of ${wf.context.get("approvals_required", 1)}
      % for a in wf.context.get("approvals", []):
      <br>${a["by"]}${": " + a["comment"] if a.get("comment") else ""}
      % endfor
    </dd>
  </dl>
  <form method="post" action="${url_for('approval_decision', wf_id=wf.id)}" class="actions">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <input type="hidden" name="version" value="${wf.version}">
    <label for="text-${wf.id}">Comment, or the reason for a rejection</label>
    <input type="text" id="text-${wf.id}" name="text" maxlength="1000">
    <button type="submit" name="decision" value="approve">Approve</button>
    <button type="submit" name="decision" value="reject">Reject</button>
  </form>
</section>
% endfor
