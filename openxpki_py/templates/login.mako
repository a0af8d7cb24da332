<%inherit file="base.mako"/>
<%block name="page_title">Choose your role</%block>
<h1>Choose your role</h1>
% if role is not None:
<p>You are currently working as <strong>${role}</strong>. Choosing a role checks again whether it is granted to you.</p>
% else:
<p>Hello ${identity.display_name}. Choose the role you want to work in. Whether it is granted to you is checked when you choose it.</p>
% endif
<form method="post" action="${url_for('login')}" class="roles">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  % if next_path:
  <input type="hidden" name="next" value="${next_path}">
  % endif
  <fieldset>
    <legend>Roles offered to you</legend>
    % for name in offered:
    <button type="submit" name="role" value="${name}">${name}</button>
    % endfor
  </fieldset>
</form>
