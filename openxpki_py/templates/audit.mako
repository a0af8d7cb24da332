<%inherit file="base.mako"/>
<%block name="page_title">Audit log</%block>
<h1>Audit log</h1>
% if message:
<p class="status" role="status">${message}</p>
% endif
<form method="post" action="${url_for('audit_verify')}">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <button type="submit">Verify the chain</button>
</form>
<p>The latest ${len(rows)} entries, newest first.</p>
<table class="audit">
  <thead><tr><th scope="col">#</th><th scope="col">Time (UTC)</th><th scope="col">Actor</th><th scope="col">Role</th>
    <th scope="col">Event</th><th scope="col">Outcome</th><th scope="col">Target</th></tr></thead>
  <tbody>
  % for row in rows:
    <tr><td>${row['id']}</td><td>${row['logged_at'].strftime('%Y-%m-%d %H:%M:%S')}</td><td>${row['actor']}</td>
      <td>${row['role_name'] or ''}</td><td>${row['event']}</td><td>${row['outcome']}</td><td>${row['target'] or ''}</td></tr>
  % endfor
  </tbody>
</table>
