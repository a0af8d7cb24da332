<%inherit file="base.mako"/>
<%block name="page_title">Session ended</%block>
<h1>Session ended</h1>
<p>Your session in this application has ended. Your single sign-on is managed by your
organisation; close the browser to end it as well.</p>
<p><a href="${url_for('home')}">Start a new session</a></p>
