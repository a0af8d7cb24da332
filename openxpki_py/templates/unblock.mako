<%inherit file="base.mako"/>
<%block name="page_title">Unblock the PIN of card ${workflow.context.get("token_serial")}</%block>
<%
  wf = workflow
  card = wf.context.get("card") or {}
%>
<h1>Unblock the PIN of card ${wf.context.get("token_serial")}</h1>
<p class="status" role="status" id="unblock-state" data-state="${wf.state}">${wf.definition.states[wf.state].label if wf.definition else wf.state}</p>
% if wf.creator != wf.context.get("owner"):
<p id="unblock-started-by">Started for you by the help desk (${wf.creator}).</p>
% endif
% if page.failure:
<p class="error" id="unblock-failure">${page.failure}</p>
% endif
% if wf.state == "UNBLOCKED":
<p id="unblock-done">Your card has the new PIN you typed into the agent. Use it from now on.</p>
% elif wf.state == "FAILED" and (wf.context.get("result") or {}).get("code"):
<p id="unblock-result">The card did not take it (${wf.context["result"]["code"]}); the card is as it was.
   Start again below, or ask the help desk.</p>
% endif
% if page.code_offered:
<section id="unblock-howto">
  <h2>How it works</h2>
  <ol>
    <li>Insert the card whose PIN is blocked.</li>
    <li>Get a one-time code here and run the token agent's command on this computer.</li>
    <li>Confirm here that the agent found your card and shows the same phrase.</li>
    <li>Type your new PIN into the agent (twice). It never leaves your computer; the server sends the agent the
        card's unblock key once, and the agent sets the new PIN on the card.</li>
  </ol>
  % if code:
  <p>Your code works once, for this unblock only, for ${code_minutes} minutes:</p>
  <p class="enrollment-code"><code id="enrollment-code">${code}</code></p>
  <pre id="agent-command"><code>${agent_command}</code></pre>
  <p>Nobody else may see this code.</p>
  % endif
  <form method="post" action="${base_url}/code" class="inline">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <button type="submit" id="get-code">${"Get a new code" if code else "Show the code for the agent"}</button>
  </form>
</section>
% endif
% if page.pairing:
<section id="pairing" data-agent="${page.pairing.credential_id}">
  <h2>Is this your card ${card.get("serial")}, and does your agent show this phrase?</h2>
  <p class="pairing-phrase"><strong id="pairing-phrase">${page.pairing.phrase}</strong></p>
  <p>If your agent shows other words or none, someone else used your code: cancel.</p>
  <form method="post" action="${base_url}/action" class="actions" id="confirm-card">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <input type="hidden" name="version" value="${wf.version}">
    <input type="hidden" name="agent" value="${page.pairing.credential_id}">
    <button type="submit" name="action" value="confirm_card">Yes, my card and my agent's phrase</button>
  </form>
</section>
% endif
% if wf.proc_state not in ("finished", "failed"):
<form method="post" action="${base_url}/action" class="actions" id="cancel-unblock">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <input type="hidden" name="version" value="${wf.version}">
  <button type="submit" name="action" value="cancel">Cancel</button>
</form>
<p><a href="${base_url}" id="reload">Reload this page</a> to see the agent's progress.</p>
% endif
<p><a href="${url_for('my_certificates')}">Back to my certificates</a></p>
