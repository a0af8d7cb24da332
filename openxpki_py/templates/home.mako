<%inherit file="base.mako"/>
<%block name="page_title">Home</%block>
<h1>Welcome, ${identity.display_name}</h1>
<p>You are working as <strong>${role}</strong>.</p>
% if menu:
<p>Choose a task:</p>
<ul class="tasks">
  % for entry in menu:
  <li><a href="${url_for(entry.endpoint)}">${entry.label}</a></li>
  % endfor
</ul>
% else:
<p>There is nothing for this role to do here yet.</p>
% endif
