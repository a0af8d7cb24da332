<%inherit file="base.mako"/>
<%block name="page_title">${title}</%block>
<h1>${title}</h1>
<p class="error-message">${message}</p>
% if error_code:
<p class="error-code">Code: <code>${error_code}</code></p>
% endif
% if identity is not None and role is None and can_switch:
<p><a href="${url_for('login')}">Choose a role</a></p>
% elif identity is not None and role is not None:
<p><a href="${url_for('home')}">Back to the start page</a></p>
% endif
