<%inherit file="base.mako"/>
<%block name="page_title">Session ended</%block>
<h1>Session ended</h1>
% if sso_logout_url:
<p>Your session in this application has ended. You are still signed in to your
organisation's single sign-on.</p>
<p><a id="sso-logout" href="${sso_logout_url}">Sign out of single sign-on as well</a></p>
% else:
<p>Your session in this application has ended. Your single sign-on is managed by your
organisation; close the browser to end it as well.</p>
% endif
<p><a href="${url_for('home')}">Start a new session</a></p>
